"""AdamW (decoupled weight decay) with 8-bit or 32-bit block-wise state; same math as torch.optim.AdamW."""
from __future__ import annotations

from typing import Iterable

from .adam import Adam
from .base import WD_DECOUPLED, bit_variants, paged_variants

__all__ = ["AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit"]


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay before the Adam update)."""

    weight_decay_mode = WD_DECOUPLED

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, **kwargs) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)


AdamW8bit, AdamW32bit = bit_variants(AdamW)
PagedAdamW, PagedAdamW8bit, PagedAdamW32bit = paged_variants(AdamW, AdamW8bit, AdamW32bit)
