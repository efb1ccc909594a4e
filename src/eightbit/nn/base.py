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
    # buffers whose dtype never follows a module cast (``.half()``, ``.double()``, ``.to(dtype)``): codes and scales
    fixed_dtype_buffers: tuple[str, ...] = ()

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "QuantizedLinear":  # pragma: no cover - abstract
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes of parameters and buffers as stored (weight codes, scales, bias)."""
        return sum(t.numel() * t.element_size() for t in list(self.parameters()) + list(self.buffers()))

    def dequantized_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The weight as float32 [out_features, in_features] (for analysis and tests; allocates)."""
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        # Codes and scales keep their dtypes whatever the module is cast to: an fp8 weight cast to float64, or
        # scales rounded to bf16, would silently change (or break) the layer. Device moves still apply.
        before = {name: t for name in self.fixed_dtype_buffers if (t := getattr(self, name, None)) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            moved = getattr(self, name)
            if moved.dtype != old.dtype:  # a dtype cast: go back to the exact original values on the new device
                # (a meta tensor has no values to keep: to_empty then .half() gives an uninitialized one)
                fixed = moved.to(old.dtype) if old.is_meta else old.to(moved.device)
                setattr(self, name, fixed)
        return self

