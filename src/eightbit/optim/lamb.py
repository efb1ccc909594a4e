"""LAMB (You et al., 2019): Adam direction plus weight decay, scaled per tensor by the trust ratio
||param|| / ||direction||; ``max_unorm`` > 0 additionally caps the update norm as in bitsandbytes."""
from __future__ import annotations

from typing import Any


from .adam import Adam
from .base import WD_NONE, bit_variants

__all__ = ["LAMB", "LAMB8bit", "LAMB32bit"]


class LAMB(Adam):
    """LAMB with Adam's keyword options (betas, eps, weight_decay, ...); moments as in Adam/Adam8bit."""

    weight_decay_mode = WD_NONE
    update_rule = "lamb"  # Adam's direction + weight_decay * p, scaled by the trust ratio

    def __init__(self, params, lr: float = 1e-3, *, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(params, lr, eps=eps, **kwargs)

    def needs_update_norm(self, config: dict[str, Any]) -> bool:
        return True

    def update_scale(self, unorm: float, pnorm: float, config: dict[str, Any]) -> float:
        scale = pnorm / unorm if pnorm > 0 and unorm > 0 else 1.0
        max_unorm = config.get("max_unorm", 0.0)
        if max_unorm > 0 and unorm > 0:
            scale = min(scale, max_unorm * pnorm / unorm)
        return scale


LAMB8bit, LAMB32bit = bit_variants(LAMB)
