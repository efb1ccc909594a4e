"""LAMB (You et al., 2019): Adam direction plus weight decay, scaled per tensor by the trust ratio
||param|| / ||direction||; ``max_unorm`` > 0 additionally caps the update norm as in bitsandbytes."""
from __future__ import annotations

from typing import Any

import torch

from .adam import Adam, adam_rule
from .base import WD, WD_NONE, bit_variants

__all__ = ["LAMB", "LAMB8bit", "LAMB32bit", "lamb_rule"]


def lamb_rule(g: torch.Tensor, p: torch.Tensor, s: list[torch.Tensor], hp: torch.Tensor):
    """Adam's bias-corrected direction + weight_decay * p (same hp layout as Adam)."""
    d, new = adam_rule(g, p, s, hp)
    return d + hp[WD] * p, new


class LAMB(Adam):
    """LAMB with Adam's keyword options (betas, eps, weight_decay, ...); moments as in Adam/Adam8bit."""

    weight_decay_mode = WD_NONE
    rule = staticmethod(lamb_rule)
    native_update = None  # the native kernel implements adam_rule only

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
