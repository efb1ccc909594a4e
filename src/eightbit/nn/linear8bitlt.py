"""`Linear8bitLt`: the LLM.int8() drop-in replacement for ``nn.Linear``."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_number
from ..functional.int8 import dequantized_weight_chunks, int8_linear, prepack_weight
from ..functional.vectorwise import quantize_vectorwise
from .base import QuantizedLinear


class Linear8bitLt(QuantizedLinear):
    """Linear layer with an int8 weight (one float32 absmax per output row) running LLM.int8().

    Buffers: ``weight_int8`` int8 [out_features, in_features], ``weight_absmax`` float32 [out_features];
    ``bias`` a float Parameter or None. About a quarter of the fp32 memory. Input: fp32/bf16/fp16
    [..., in_features]; output has the input's dtype. The weight is frozen; gradients flow to the input
    (and the bias), so adapters such as LoRA can train on top.

    ``.to(dtype)`` casts only the bias (the int8 codes and float32 absmax keep their dtypes);
    ``.to(device)`` moves everything. Nothing is re-quantized by ``.to``.

    On CPU the weight is packed for oneDNN on the first forward and cached on the module (not in the
    state_dict); the cache is dropped by ``.to()``/``load_state_dict`` and rebuilt when ``weight_int8`` changes.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = 6.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = check_number(threshold, "threshold", low=0.0)
        self.register_buffer("weight_int8", torch.zeros((out_features, in_features), dtype=torch.int8, device=device))
        self.register_buffer("weight_absmax", torch.zeros(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.register_parameter("bias", None)
        self._packed: tuple[tuple, torch.Tensor | None] | None = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Linear8bitLt":
        """Quantize an ``nn.Linear`` (weight [out, in], any float dtype) row-wise to int8."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        if not torch.isfinite(w).all():
            raise ValueError("linear.weight holds NaN or Inf: refusing to quantize it")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, threshold=threshold, device="meta")
        q, absmax = quantize_vectorwise(w.detach(), dim=-1)
        layer.weight_int8 = q.contiguous()
        layer.weight_absmax = absmax
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight codes [out_features, in_features] (as bitsandbytes' ``Linear8bitLt.weight``)."""
        return self.weight_int8

    def _packed_weight(self) -> torch.Tensor | None:
        w = self.weight_int8
        key = (w.device, w.data_ptr(), w._version)
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        packed = prepack_weight(w)
        if packed is not None:  # None under reference_only(): do not cache, the fast path may come back
            self._packed = (key, packed)
        return packed

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_packed"] = None  # opaque oneDNN tensor: rebuilt on demand, never copied or pickled
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_weight() if self.weight_int8.device.type == "cpu" else None
        return int8_linear(x, self.weight_int8, self.weight_absmax, self.bias, threshold=self.threshold, packed_weight=packed)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The weight as float32 [out_features, in_features] (allocates a full float copy)."""
        out = torch.empty(self.weight_int8.shape, dtype=torch.float32, device=self.weight_int8.device)
        for start, w in dequantized_weight_chunks(self.weight_int8, self.weight_absmax, 1024):
            out[start : start + w.shape[0]] = w
        return out

    def _apply(self, fn, recurse=True):
        # Keep the absmax in float32 whatever dtype the module is cast to: bf16 scales would cost accuracy.
        absmax = self.weight_absmax
        self._packed = None
        super()._apply(fn, recurse)
        moved = self.weight_absmax
        self.weight_absmax = absmax.to(device=moved.device, dtype=torch.float32)
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={self.threshold}, memory={self.storage_bytes() / 2**20:.2f} MiB "
            f"(fp32 {self.in_features * self.out_features * 4 / 2**20:.2f} MiB)"
        )
