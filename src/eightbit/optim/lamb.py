"""LAMB (You et al., 2019): Adam direction plus weight decay, scaled per tensor by the trust ratio
||param|| / ||direction||; ``max_unorm`` > 0 additionally caps the update norm as in bitsandbytes. Arguments and
defaults as bitsandbytes' ``LAMB`` (eps 1e-8, max_unorm 1.0, which never binds below the trust ratio)."""
from __future__ import annotations

from typing import Any


from .adam import Adam
from .base import WD_L2, WD_NONE, bit_variants

__all__ = ["LAMB", "LAMB8bit", "LAMB32bit"]


class LAMB(Adam):
    """LAMB; moments as in Adam/Adam8bit. Positional as bitsandbytes: ``params, lr, bias_correction, betas, eps,
    weight_decay, amsgrad, adam_w_mode``. ``adam_w_mode=True``: the decay joins the direction that the trust ratio
    scales (the paper); False: L2 added to the gradient. ``bias_correction=False`` drops Adam's corrections."""

    weight_decay_mode = WD_NONE
    update_rule = "lamb"  # Adam's direction + weight_decay * p, scaled by the trust ratio

    def __init__(self, params, lr: float = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, adam_w_mode: bool = True, *, max_unorm: float = 1.0, **kwargs) -> None:
        for name, v in (("bias_correction", bias_correction), ("adam_w_mode", adam_w_mode)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {v!r}")
        self._lamb_options = {"bias_correction": bias_correction, "adam_w_mode": adam_w_mode}
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, max_unorm=max_unorm, **kwargs)

    def _defaults_extra(self) -> dict[str, Any]:
        return dict(self._lamb_options)

    def rule_for(self, config: dict[str, Any]) -> tuple[str, int]:
        return ("lamb", WD_NONE) if config.get("adam_w_mode", True) else ("adam", WD_L2)

    def needs_update_norm(self, config: dict[str, Any]) -> bool:
        return True

    def update_scale(self, unorm: float, pnorm: float, config: dict[str, Any]) -> float:
        scale = pnorm / unorm if pnorm > 0 and unorm > 0 else 1.0
        max_unorm = config.get("max_unorm", 0.0)
        if max_unorm > 0 and unorm > 0:
            scale = min(scale, max_unorm * pnorm / unorm)
        return scale


LAMB8bit, LAMB32bit = bit_variants(LAMB)
