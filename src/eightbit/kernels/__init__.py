"""Device kernels registered against the eightbit ops (``eightbit.functional.ops``) with ``torch.library``.

Imported by ``eightbit.functional`` so that every op has its fastest kernel from the first call. The CPU kernels
are always imported (they register only what builds here); the CUDA kernels (Triton, :mod:`.cuda`) only where a
CUDA device and Triton exist, so ``import eightbit`` never imports Triton elsewhere.
``reference_only()`` / ``EIGHTBIT_REFERENCE=1`` force the plain-PyTorch references; ``registered_kernels()``
lists what serves which device.
"""
import importlib.util

import torch

from .registry import forced_reference, reference_only, register, registered_kernels
from . import cpu  # noqa: F401,E402  (registration)

if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    from . import cuda  # noqa: F401  (registration)

__all__ = ["forced_reference", "reference_only", "register", "registered_kernels"]
