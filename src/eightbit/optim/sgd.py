"""SGD with (optionally Nesterov) momentum, momentum buffer in 8-bit or 32-bit; torch.optim.SGD math."""
from __future__ import annotations

from typing import Any, Iterable


from .base import WD_L2, Optimizer8bit, bit_variants

__all__ = ["SGD", "SGD8bit", "SGD32bit"]


class SGD(Optimizer8bit):
    """SGD; with momentum > 0 the momentum buffer (signed dynamic code) is kept in 8 bits when optim_bits=8.
    weight_decay is L2 as in torch.optim.SGD."""

    counts_steps = False  # its rule uses no step: torch's SGD state (momentum_buffer only) loads as it is

    weight_decay_mode = WD_L2
    update_rule = "momentum"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        optim_bits: int | None = None,
        min_8bit_size: int = 4096,
        percentile_clipping: float = 100,
        max_unorm: float = 0.0,
        blocksize: int = 2048,
        nonfinite: str = "skip_block",
        state_code: str = "auto",
        args: None = None,
        is_paged: bool = False,
    ) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening == 0")
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=bool(nesterov),
            optim_bits=optim_bits, min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping,
            max_unorm=max_unorm, blocksize=blocksize, nonfinite=nonfinite, state_code=state_code,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("momentum_buffer", True),) if config["momentum"] > 0 else ()

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        c = 1.0 if step == 1 else 1.0 - config["dampening"]  # torch: the first step stores g undamped
        return dict(beta1=config["momentum"], one_minus_beta1=c, nesterov=float(config["nesterov"]))


SGD8bit, SGD32bit = bit_variants(SGD)
