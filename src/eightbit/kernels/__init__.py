"""Fast paths per device, registered with `eightbit.kernels.dispatch`. Each kernel module registers itself
on import; a module that fails to import (missing op in this torch build) leaves the reference in place."""
import importlib
import warnings

from .dispatch import get_kernel, reference_only, register_kernel, registered_kernels

__all__ = ["get_kernel", "reference_only", "register_kernel", "registered_kernels"]

# Kernel modules; each owner adds its module name here.
_KERNEL_MODULES = ["int8_cpu", "blockwise_cpu", "fp8_cpu", "optim_fused", "optim_native"]

for _name in _KERNEL_MODULES:
    try:
        importlib.import_module(f".{_name}", __name__)
    except ModuleNotFoundError as e:  # module not written yet or optional dependency missing
        if e.name != f"{__name__}.{_name}":
            warnings.warn(f"eightbit kernel module {_name!r} unavailable: {e}", RuntimeWarning, stacklevel=2)
