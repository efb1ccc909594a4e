"""`Linear8bitLt`: the LLM.int8() drop-in replacement for ``nn.Linear``."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_number
from ..functional.int8 import dequantized_weight_chunks, int8_linear
from ..functional.vectorwise import quantize_vectorwise
from .base import QuantizedLinear


# Float scratch per step of quantize_weight_rows: about 1M values (4 MB in fp32).
CHUNK_ELEMENTS = 1 << 20
_SUBNORMAL_STEP = 2.0**-100  # quantize_vectorwise switches to float64 below this absmax


@torch.no_grad()
def quantize_weight_rows(weight: torch.Tensor, *, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_vectorwise(weight, dim=-1)`` computed in row chunks into a preallocated int8 tensor, so no
    float temporary larger than ``chunk_elements`` values is created (a streaming load of a big checkpoint
    otherwise holds two fp32 copies of the whole matrix next to the incoming weight).

    ``weight``: float [out, in], any layout. Returns ``(weight_int8, absmax)``: contiguous int8 [out, in]
    and float32 [out], bit-identical to the unchunked call (absmax is per row, so rows are independent).
    Raises ValueError if ``weight`` holds NaN or Inf."""
    rows = max(1, chunk_elements // max(1, weight.shape[-1]))
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    absmax = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    if weight.is_meta:  # a layout only (meta-device model skeletons): nothing to quantize or check
        return codes, absmax
    for r in range(0, weight.shape[0], rows):
        codes[r : r + rows], absmax[r : r + rows] = quantize_vectorwise(weight[r : r + rows], dim=-1)
    if not torch.isfinite(absmax).all():  # amax propagates NaN/Inf: same test as isfinite(weight).all()
        raise ValueError("weight holds NaN or Inf: refusing to quantize it")
    # quantize_vectorwise picks float64 for a whole call when any row has a subnormal step; a chunk without
    # such a row would round differently than the unchunked call, so redo those (rare) weights in one piece.
    if rows < weight.shape[0] and bool(((absmax < _SUBNORMAL_STEP) & (absmax > 0)).any()):
        q, absmax = quantize_vectorwise(weight, dim=-1)
        codes.copy_(q)
    return codes, absmax


class Linear8bitLt(QuantizedLinear):
    """Linear layer with an int8 weight (one float32 absmax per output row) running LLM.int8().

    Buffers: ``weight_int8`` int8 [out_features, in_features], ``weight_absmax`` float32 [out_features];
    ``bias`` a float Parameter or None. About a quarter of the fp32 memory. Input: fp32/bf16/fp16/fp64
    [..., in_features]; output has the input's dtype. The weight is frozen; gradients flow to the input
    (and the bias), so adapters such as LoRA can train on top.

    ``.to(dtype)`` casts only the bias (the int8 codes and float32 absmax keep their dtypes);
    ``.to(device)`` moves everything. Nothing is re-quantized by ``.to``. A layer built with ``device="meta"``
    can be materialized with ``.to_empty(device=...)`` and then loaded from a state_dict.

    The forward is one op (``eightbit::int8_linear``): it compiles with ``torch.compile(fullgraph=True)`` and
    exports with ``torch.export``, the data-dependent outlier columns staying inside the op.
    """

    fixed_dtype_buffers = ("weight_absmax",)  # float32 scales: bf16 ones would cost accuracy

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

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Linear8bitLt":
        """Quantize an ``nn.Linear`` (weight [out, in], any float dtype) row-wise to int8, in row chunks
        (see ``quantize_weight_rows``); a meta-device ``linear`` gives a meta-device layer. Raises ValueError
        if the weight holds NaN or Inf."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, threshold=threshold, device="meta")
        layer.weight_int8, layer.weight_absmax = quantize_weight_rows(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight codes [out_features, in_features] (as bitsandbytes' ``Linear8bitLt.weight``)."""
        return self.weight_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight_int8, self.weight_absmax, self.bias, threshold=self.threshold)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The weight as float32 [out_features, in_features] (allocates a full float copy)."""
        out = torch.empty(self.weight_int8.shape, dtype=torch.float32, device=self.weight_int8.device)
        for start, w in dequantized_weight_chunks(self.weight_int8, self.weight_absmax, 1024):
            out[start : start + w.shape[0]] = w
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={self.threshold}, memory={self.storage_bytes() / 2**20:.2f} MiB "
            f"(fp32 {self.in_features * self.out_features * 4 / 2**20:.2f} MiB)"
        )
