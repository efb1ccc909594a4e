"""LARS as in bitsandbytes: momentum SGD whose update norm is capped at ``max_unorm * ||param||``
(layer-wise trust-ratio clipping, default 0.02)."""
from __future__ import annotations

from typing import Iterable

from .base import bit_variants
from .sgd import SGD

__all__ = ["LARS", "LARS8bit", "LARS32bit"]


class LARS(SGD):
    """LARS: SGD with momentum (required, > 0) and a per-layer cap ||update|| <= max_unorm * ||param||."""

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, max_unorm: float = 0.02, **kwargs) -> None:
        if not isinstance(momentum, (int, float)) or momentum <= 0:
            raise ValueError(f"momentum must be > 0 for LARS, got {momentum!r}")
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, max_unorm=max_unorm, **kwargs)

    def _validate(self, d) -> None:
        super()._validate(d)
        if d["momentum"] <= 0:
            raise ValueError(f"momentum must be > 0 for LARS, got {d['momentum']!r}")


LARS8bit, LARS32bit = bit_variants(LARS)
