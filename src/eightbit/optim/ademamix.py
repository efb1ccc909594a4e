"""AdEMAMix (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster, Older"): Adam plus a slow EMA of
the gradient (beta3, weight alpha), with bitsandbytes' arguments and schedulers for alpha and beta3."""
from __future__ import annotations

import math
from typing import Any, Iterable

from .base import WD_DECOUPLED, Optimizer8bit, bit_variants, paged_variants

__all__ = ["AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit"]


class AdEMAMix(Optimizer8bit):
    """AdEMAMix; states m1, m2 (signed dynamic code) and nu (unsigned) 8-bit when ``optim_bits=8``. Positional as
    bitsandbytes: ``params, lr, betas=(b1, b2, b3), alpha, t_alpha, t_beta3, eps, weight_decay``; decoupled weight
    decay. ``t_alpha`` / ``t_beta3``: warm-up steps of alpha (linear) and beta3 (the paper's schedule)."""

    weight_decay_mode = WD_DECOUPLED
    update_rule = "ademamix"
    n_betas = 3

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        optim_bits: int | None = None,
        min_8bit_size: int = 4096,
        percentile_clipping: float = 100,
        max_unorm: float = 0.0,
        blocksize: int = 2048,
        nonfinite: str = "skip_block",
        state_code: str = "auto",
        stochastic_rounding: bool = True,
        args: None = None,
        is_paged: bool = False,
    ) -> None:
        for name, v in (("t_alpha", t_alpha), ("t_beta3", t_beta3)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        super().__init__(params, dict(
            lr=lr, betas=tuple(betas), ademamix_alpha=float(alpha), t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
            weight_decay=weight_decay, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
            percentile_clipping=percentile_clipping, max_unorm=max_unorm, blocksize=blocksize, nonfinite=nonfinite,
            state_code=state_code,
            stochastic_rounding=stochastic_rounding,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))
        for group in self.param_groups:  # the beta3 schedule interpolates log(beta1) and log(beta3)
            b = group["betas"]
            if group["t_beta3"] and not (float(b[0]) > 0 and float(b[2]) > 0):
                raise ValueError(f"betas[0] and betas[2] must be > 0 with t_beta3 (its schedule interpolates their "
                                 f"logarithms), got {tuple(b)}")

    def state_spec(self, config: dict[str, Any]):
        return (("exp_avg", True), ("exp_avg_slow", True), ("exp_avg_sq", False))

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2, b3 = config["betas"]
        alpha, t_alpha, t_beta3 = config["ademamix_alpha"], config["t_alpha"], config["t_beta3"]
        if t_alpha:
            alpha = min(step * alpha / t_alpha, alpha)
        if t_beta3:  # the paper's schedule: from beta1 to beta3 over t_beta3 steps
            scale = step / t_beta3
            ln1, ln3 = math.log(b1), math.log(b3)
            b3 = min(math.exp((ln1 * ln3) / ((1 - scale) * ln3 + scale * ln1)), b3)
        return dict(beta1=b1, one_minus_beta1=1 - b1, beta2=b2, one_minus_beta2=1 - b2, beta3=b3,
                    one_minus_beta3=1 - b3, alpha=alpha, eps=config["eps"], bias_correction1=1 - b1**step,
                    bias_correction2_sqrt=(1 - b2**step) ** 0.5)


AdEMAMix8bit, AdEMAMix32bit = bit_variants(AdEMAMix)
PagedAdEMAMix, PagedAdEMAMix8bit, PagedAdEMAMix32bit = paged_variants(AdEMAMix, AdEMAMix8bit, AdEMAMix32bit)
