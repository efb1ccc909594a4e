"""`Linear8bitLt`: the LLM.int8() drop-in replacement for ``nn.Linear``."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_bool, check_number, check_positive_int
from ..functional.int8 import dequantized_weight_chunks, int8_linear, int8_linear_float_weight
from ..functional.vectorwise import quantize_vectorwise
from .base import QuantizedLinear


# Float scratch per step of quantize_weight_rows: about 1M values (4 MB in fp32).
CHUNK_ELEMENTS = 1 << 20


@torch.no_grad()
def quantize_weight_rows(weight: torch.Tensor, *, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_vectorwise(weight, dim=-1)`` computed in row chunks into a preallocated int8 tensor, so no
    float temporary larger than ``chunk_elements`` values is created (a streaming load of a big checkpoint
    otherwise holds two fp32 copies of the whole matrix next to the incoming weight).

    ``weight``: float [out, in], any layout; float64 rows are rounded to float32 first (the codes and scales
    are float32's). Returns ``(weight_int8, absmax)``: contiguous int8 [out, in] and float32 [out], bit-identical
    to the unchunked call (absmax is per row, so rows are independent). Raises ValueError if ``weight`` holds NaN
    or Inf (or, in float64, values beyond float32's range)."""
    rows = max(1, chunk_elements // max(1, weight.shape[-1]))
    as32 = lambda t: t.float() if t.dtype == torch.float64 else t  # noqa: E731
    if rows >= weight.shape[0] and not weight.is_meta and weight.numel():  # one chunk: its result as it is (a
        # preallocated copy cost as much again as the quantization: MiniLM's 37 weights 5.0 -> 10.8 ms)
        codes, absmax = quantize_vectorwise(as32(weight), dim=-1)
        codes, absmax = codes.contiguous(), absmax.reshape(-1).contiguous()
    else:
        codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        absmax = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
        if weight.is_meta:  # a layout only (meta-device model skeletons): nothing to quantize or check
            return codes, absmax
        for r in range(0, weight.shape[0], rows):
            codes[r : r + rows], absmax[r : r + rows] = quantize_vectorwise(as32(weight[r : r + rows]), dim=-1)
    if not torch.isfinite(absmax).all():  # amax propagates NaN/Inf: same test as isfinite(weight).all()
        raise ValueError("weight holds NaN or Inf: refusing to quantize it")
    return codes, absmax


class Linear8bitLt(QuantizedLinear):
    """Linear layer running LLM.int8(): int8 weight rows (one float32 absmax each), vector-wise int8
    activations, outlier columns (any ``|x| >= threshold``) in float. A drop-in for ``nn.Linear`` and for
    ``bitsandbytes.nn.Linear8bitLt``, whose arguments bind the same way:
    ``Linear8bitLt(in_features, out_features, bias=True, has_fp16_weights=False, threshold=6.0, index=None,
    device=None, dtype=None)``.

    ``has_fp16_weights=False`` (default; bitsandbytes' default is True, see docs/migrating_from_bitsandbytes.md):
    buffers ``weight_int8`` int8 [out, in] and ``weight_absmax`` float32 [out], about a quarter of the fp32
    memory. The weight is frozen; gradients flow to the input and the bias (LoRA can train on top).
    ``has_fp16_weights=True``: ``weight`` is a float Parameter that trains; every forward quantizes it row-wise
    and runs the int8 product, the backward uses the float weight (as bitsandbytes does).

    Loading (``load_state_dict``), as a bitsandbytes user expects: a float ``weight`` (an ``nn.Linear``'s
    state_dict) is quantized at load time; bitsandbytes' 8-bit layout (``weight`` int8, ``SCB`` float32,
    ``weight_format``, as HF ``save_pretrained`` of a ``load_in_8bit`` model writes it) loads as is; eightbit's own
    ``weight_int8`` / ``weight_absmax`` too. ``is_quantized`` says whether the layer holds int8 weights, and the
    repr shows it. Nothing is quantized by ``.to(device)``: a float state_dict is already quantized on load.

    Input: fp32/bf16/fp16/fp64 [..., in_features]; output has the input's dtype. ``.to(dtype)`` casts only the
    bias (and a float ``weight``); codes and absmax keep their dtypes. A layer built with ``device="meta"`` can be
    materialized with ``.to_empty(device=...)`` and then loaded. The forward is one op
    (``eightbit::int8_linear``): it compiles with ``torch.compile(fullgraph=True)`` and exports with
    ``torch.export``. ``index`` (bitsandbytes' weight reordering) must be None.
    """

    fixed_dtype_buffers = ("weight_absmax",)  # float32 scales: bf16 ones would cost accuracy

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        has_fp16_weights: bool = False,
        threshold: float = 6.0,
        index: None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        check_bool(bias, "bias")
        check_bool(has_fp16_weights, "has_fp16_weights")
        if index is not None:
            raise ValueError("index (bitsandbytes' column reordering of old weight formats) is not supported: "
                             "eightbit stores row-major weights; pass index=None")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = check_number(threshold, "threshold", low=0.0)
        self.has_fp16_weights = has_fp16_weights
        if has_fp16_weights:
            init = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
            self.weight = nn.Parameter(init.weight.detach())  # nn.Linear's initialization
        else:
            self.register_buffer("weight_int8", torch.zeros((out_features, in_features), dtype=torch.int8,
                                                            device=device))
            self.register_buffer("weight_absmax", torch.zeros(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0, *, has_fp16_weights: bool = False) -> "Linear8bitLt":
        """Quantize an ``nn.Linear`` (weight [out, in], any float dtype) row-wise to int8, in row chunks
        (see ``quantize_weight_rows``); a meta-device ``linear`` gives a meta-device layer. With
        ``has_fp16_weights=True`` the float weight is kept (copied). Raises ValueError if the weight holds NaN
        or Inf."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    has_fp16_weights=has_fp16_weights, threshold=threshold, device="meta")
        if has_fp16_weights:
            layer.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=linear.weight.requires_grad)
        else:
            layer.weight_int8, layer.weight_absmax = quantize_weight_rows(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def __getattr__(self, name: str):
        # bitsandbytes' ``layer.weight`` is the int8 matrix (an Int8Params whose ``.CB`` is the matrix itself and
        # ``.SCB`` the row absmax): the same here when the layer holds int8 weights. The attributes are set on
        # every access because ``.to()`` / ``load_state_dict`` may have replaced the buffers since.
        if name == "weight":
            buffers = self.__dict__.get("_buffers", {})
            if "weight_int8" in buffers:
                w = buffers["weight_int8"]
                if not torch.compiler.is_compiling():
                    w.CB, w.SCB = w, buffers["weight_absmax"]
                return w
        return super().__getattr__(name)

    @property
    def is_quantized(self) -> bool:
        """True when the layer holds int8 weights (``has_fp16_weights=False``); False for a float ``weight``."""
        return not self.has_fp16_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_fp16_weights:
            return int8_linear_float_weight(x, self.weight, self.bias, threshold=self.threshold)
        # straight from the registries: each attribute lookup otherwise runs __getattr__ below (~1 us apiece);
        # attributes moved out of them (torch.nn.utils.parametrize) go the usual way
        buffers, params = self._buffers, self._parameters
        if "weight_int8" in buffers and "weight_absmax" in buffers and "bias" in params:
            return int8_linear(x, buffers["weight_int8"], buffers["weight_absmax"], params["bias"],
                               threshold=self.threshold)
        return int8_linear(x, self.weight_int8, self.weight_absmax, self.bias, threshold=self.threshold)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The weight as float32 [out_features, in_features] (allocates a full float copy)."""
        if self.has_fp16_weights:
            return self.weight.detach().float().clone()
        out = torch.empty(self.weight_int8.shape, dtype=torch.float32, device=self.weight_int8.device)
        for start, w in dequantized_weight_chunks(self.weight_int8, self.weight_absmax, 1024):
            out[start : start + w.shape[0]] = w
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        translate_state_dict(state_dict, prefix, self)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        held = "int8" if self.is_quantized else f"{self.weight.dtype} (int8 forward)".replace("torch.", "")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={self.threshold}, weights={held}, memory={self.storage_bytes() / 2**20:.2f} MiB "
            f"(fp32 {self.in_features * self.out_features * 4 / 2**20:.2f} MiB)"
        )


_ROW_FORMATS = (0, "row")  # bitsandbytes' weight_format: only the row-major layout exists since 0.45


@torch.no_grad()
def translate_state_dict(state_dict: dict, prefix: str, layer: Linear8bitLt) -> None:
    """Rewrite, in place, the entries of ``layer`` (under ``prefix``) in a state_dict into what ``layer`` holds:
    a float ``weight`` is quantized (int8 layer), bitsandbytes' ``weight`` + ``SCB`` (+ ``weight_format``)
    become ``weight_int8`` + ``weight_absmax`` (int8 layer) or the dequantized float weight (float layer).
    Raises ValueError for a bitsandbytes weight without its ``SCB``, a format other than row-major, or a shape
    that does not match."""
    w_key, scb_key, fmt_key = prefix + "weight", prefix + "SCB", prefix + "weight_format"
    fmt = state_dict.pop(fmt_key, 0)
    fmt = fmt.item() if isinstance(fmt, torch.Tensor) else fmt
    if fmt not in _ROW_FORMATS:
        raise ValueError(f"{fmt_key}: only bitsandbytes' row-major weight format (0) can be loaded, got {fmt!r}")
    weight = state_dict.get(w_key)
    if weight is None:
        return
    shape = (layer.out_features, layer.in_features)
    if tuple(weight.shape) != shape:
        raise ValueError(f"{w_key} has shape {tuple(weight.shape)}, the layer expects {shape}")
    if weight.dtype == torch.int8:
        scb = state_dict.pop(scb_key, None)
        if scb is None:
            raise ValueError(f"{w_key} is int8 but {scb_key} (its row scales) is missing")
        if tuple(scb.shape) != (layer.out_features,):
            raise ValueError(f"{scb_key} has shape {tuple(scb.shape)}, expected ({layer.out_features},)")
        if layer.has_fp16_weights:
            state_dict[w_key] = (weight.float() * (scb.float().unsqueeze(1) / 127.0)).to(layer.weight.dtype)
        else:
            del state_dict[w_key]
            state_dict[prefix + "weight_int8"] = weight
            state_dict[prefix + "weight_absmax"] = scb.float()
    elif weight.is_floating_point() and not layer.has_fp16_weights:
        del state_dict[w_key]
        state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_absmax"] = quantize_weight_rows(weight)
