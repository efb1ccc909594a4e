"""CPU kernels: native C (``csrc/``, built and loaded by :mod:`.native`) registered against the eightbit ops;
``int8_linear``'s registered from C++ (``cpp/``, built and loaded by :mod:`.torch_ext`) where a C++ compiler is.
Each module registers its kernels on import; without a C compiler only the pure-PyTorch ``int8_mm`` kernel is
registered and every other op runs its reference."""
from . import affine, blockwise, fp8, int8, optimizer  # noqa: F401  (registration)
