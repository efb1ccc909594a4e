"""8-bit (block-wise dynamic quantized state) and 32-bit optimizers on one base class.

Switching from torch: ``torch.optim.AdamW(params, lr)`` -> ``eightbit.optim.AdamW8bit(params, lr)``."""
from .._lazy import lazy_exports

_NAMES = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LAMB", "LARS", "Lion", "AdEMAMix"]
_PAGED = ["Adam", "AdamW", "Lion", "AdEMAMix"]  # bitsandbytes' paged optimizers
_exports = {"Optimizer8bit": ".base", "GlobalOptimManager": ".manager"}
for _n in _NAMES:
    _mod = "." + _n.lower()
    _exports[_n] = _mod
    _exports[_n + "8bit"] = _mod
    _exports[_n + "32bit"] = _mod
    if _n in _PAGED:
        _exports["Paged" + _n] = _mod
        _exports["Paged" + _n + "8bit"] = _mod
        _exports["Paged" + _n + "32bit"] = _mod

__getattr__, __dir__ = lazy_exports(__name__, _exports)
