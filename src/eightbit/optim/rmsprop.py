"""RMSprop (no momentum, not centered) with 8-bit or 32-bit square-average state; torch.optim.RMSprop math."""
from __future__ import annotations

from typing import Any, Iterable


from .base import WD_L2, Optimizer8bit, bit_variants

__all__ = ["RMSprop", "RMSprop8bit", "RMSprop32bit"]


class RMSprop(Optimizer8bit):
    """RMSprop; the square average (unsigned dynamic code) is 8-bit when optim_bits=8.
    momentum and centered are not supported (ValueError), as in bitsandbytes."""

    weight_decay_mode = WD_L2
    update_rule = "rmsprop"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
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
        if momentum != 0:
            raise ValueError(f"momentum must be 0 (RMSprop with momentum is not supported), got {momentum!r}")
        if centered:
            raise ValueError("centered=True is not supported")
        super().__init__(params, dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, optim_bits=optim_bits,
            min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping, max_unorm=max_unorm,
            blocksize=blocksize, nonfinite=nonfinite, state_code=state_code,
            stochastic_rounding=stochastic_rounding,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("square_avg", False),)

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        return dict(beta2=config["alpha"], one_minus_beta2=1 - config["alpha"], eps=config["eps"])


RMSprop8bit, RMSprop32bit = bit_variants(RMSprop)
