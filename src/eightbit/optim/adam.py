"""Adam (Kingma & Ba) with 8-bit or 32-bit block-wise state; same math as torch.optim.Adam."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from .base import RULE, WD_L2, Optimizer8bit, bit_variants

__all__ = ["Adam", "Adam8bit", "Adam32bit", "adam_rule"]


def adam_rule(g: torch.Tensor, p: torch.Tensor, s: list[torch.Tensor], hp: torch.Tensor):
    """m, v moments; direction = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps).
    hp[RULE:] = b1, 1 - b1, b2, 1 - b2, eps, bc1, sqrt(bc2) (complements computed in float64)."""
    b1, c1, b2, c2, eps, bc1, bc2_sqrt = (hp[RULE + i] for i in range(7))
    m = s[0] * b1 + g * c1
    v = s[1] * b2 + g * g * c2
    return (m / bc1) / (v.sqrt() / bc2_sqrt + eps), [m, v]


class Adam(Optimizer8bit):
    """Adam; ``optim_bits=8`` keeps m (signed dynamic code) and v (unsigned) block-wise in 8 bits.

    ``params, lr`` positional like torch; everything else keyword-only (see Optimizer8bit for the
    shared options). weight_decay is L2 (added to the gradient) as in torch.optim.Adam."""

    weight_decay_mode = WD_L2
    rule = staticmethod(adam_rule)
    native_update = "optim_adam8bit_update"  # kernels/optim_native.py implements adam_rule natively

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optim_bits: int | None = None,
        min_8bit_size: int = 4096,
        percentile_clipping: float = 100,
        max_unorm: float = 0.0,
        blocksize: int = 2048,
        nonfinite: str = "skip",
        stochastic_rounding: bool = True,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, optim_bits=optim_bits,
            min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping, max_unorm=max_unorm,
            blocksize=blocksize, nonfinite=nonfinite,
            stochastic_rounding=stochastic_rounding,
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("exp_avg", True), ("exp_avg_sq", False))

    def hyper(self, config: dict[str, Any], step: int) -> list[float]:
        b1, b2 = config["betas"]
        return [b1, 1 - b1, b2, 1 - b2, config["eps"], 1 - b1**step, (1 - b2**step) ** 0.5]


Adam8bit, Adam32bit = bit_variants(Adam)
