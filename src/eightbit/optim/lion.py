"""Lion (Chen et al., 2023): sign of an interpolated momentum, decoupled weight decay; 8-bit momentum."""
from __future__ import annotations

from typing import Any, Iterable


from .base import WD_DECOUPLED, Optimizer8bit, bit_variants, paged_variants

__all__ = ["Lion", "Lion8bit", "Lion32bit", "PagedLion", "PagedLion8bit", "PagedLion32bit"]


class Lion(Optimizer8bit):
    """Lion; the momentum (signed dynamic code) is 8-bit when optim_bits=8."""

    weight_decay_mode = WD_DECOUPLED
    update_rule = "lion"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
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
        super().__init__(params, dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, optim_bits=optim_bits,
            min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping, max_unorm=max_unorm,
            blocksize=blocksize, nonfinite=nonfinite, state_code=state_code,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("exp_avg", True),)

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = config["betas"]
        return dict(beta1=b1, one_minus_beta1=1 - b1, beta2=b2, one_minus_beta2=1 - b2)


Lion8bit, Lion32bit = bit_variants(Lion)
PagedLion, PagedLion8bit, PagedLion32bit = paged_variants(Lion, Lion8bit, Lion32bit)
