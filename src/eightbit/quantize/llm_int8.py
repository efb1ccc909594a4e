"""`Int8Config`: LLM.int8() conversion of linear layers to `Linear8bitLt`."""
from __future__ import annotations

import dataclasses

from torch import nn

from .._checks import check_number
from .base import QuantConfig, check_patterns, register_config


@register_config
@dataclasses.dataclass
class Int8Config(QuantConfig):
    """LLM.int8(): int8 weights (per output row), vector-wise int8 activations, and outlier columns
    (any ``|x| >= threshold``) in float. ``threshold=0`` is pure vector-wise int8.

    ``skip_modules``: name patterns of layers kept in float (default: the LM head)."""

    method = "llm_int8"
    threshold: float = 6.0
    skip_modules: tuple[str, ...] = ("lm_head",)

    def __post_init__(self) -> None:
        self.threshold = check_number(self.threshold, "threshold", low=0.0)
        self.skip_modules = check_patterns(self.skip_modules)

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        """``Linear8bitLt.from_linear(linear, threshold)``."""
        from ..nn.linear8bitlt import Linear8bitLt

        return Linear8bitLt.from_linear(linear, threshold=self.threshold)
