"""Adagrad with 8-bit or 32-bit sum-of-squares state; torch.optim.Adagrad math (initial accumulator 0)."""
from __future__ import annotations

from typing import Any, Iterable


from .base import WD_L2, Optimizer8bit, bit_variants

__all__ = ["Adagrad", "Adagrad8bit", "Adagrad32bit"]


class Adagrad(Optimizer8bit):
    """Adagrad; the accumulated squared gradient (unsigned dynamic code) is 8-bit when optim_bits=8."""

    weight_decay_mode = WD_L2
    update_rule = "adagrad"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
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
        if initial_accumulator_value != 0:
            raise ValueError(f"initial_accumulator_value must be 0, got {initial_accumulator_value!r}")
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, optim_bits=optim_bits,
            min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping, max_unorm=max_unorm,
            blocksize=blocksize, nonfinite=nonfinite, state_code=state_code,
            stochastic_rounding=stochastic_rounding,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("sum", False),)

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        return dict(eps=config["eps"], lr_decay=1.0 / (1.0 + (step - 1) * config["lr_decay"]))


Adagrad8bit, Adagrad32bit = bit_variants(Adagrad)
