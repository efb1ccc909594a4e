"""The common base of every quantized linear layer (int8 LLM.int8(), static int8, fp8)."""
from __future__ import annotations

import torch
from torch import nn


class QuantizedLinear(nn.Module):
    """Base class of eightbit's quantized replacements for ``nn.Linear``.

    Subclasses hold their weight in 8 bits plus scales, keep ``in_features``/``out_features``, and
    implement ``from_linear(linear, **options)``. ``eightbit.quantize_model`` and the save/load code find
    quantized layers through this class.
    """

    in_features: int
    out_features: int

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "QuantizedLinear":  # pragma: no cover - abstract
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes of parameters and buffers as stored (weight codes, scales, bias)."""
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))

    def dequantized_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The weight as float32 [out_features, in_features] (for analysis and tests; allocates)."""
        raise NotImplementedError
