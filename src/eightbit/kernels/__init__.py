"""Device kernels registered against the eightbit ops (``eightbit.functional.ops``) with ``torch.library``.

Imported by ``eightbit.functional`` so that every op has its fastest kernel from the first call. The CPU kernels
are always imported (they register only what builds here); GPU kernels only where that device exists.
``reference_only()`` / ``EIGHTBIT_REFERENCE=1`` force the plain-PyTorch references; ``registered_kernels()``
lists what serves which device.
"""
from .registry import forced_reference, reference_only, register, registered_kernels
from . import cpu  # noqa: F401,E402  (registration)

__all__ = ["forced_reference", "reference_only", "register", "registered_kernels"]
