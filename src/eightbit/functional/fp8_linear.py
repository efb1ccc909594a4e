"""The FP8 linear: ``y = dequantize(x_q) @ dequantize(w_q).T + bias`` for fp8 activation and weight codes, as one
op (``eightbit::fp8_linear``) so that a device with FP8 tensor cores can run the product on the codes
(``torch._scaled_mm`` on CUDA, compute capability >= 8.9) while everywhere else the reference dequantizes.

Shapes and dtypes: ``x_q`` [M, K] and ``w_q`` [N, K] uint8 bit patterns of ``fp8_dtype`` codes (or that float8
dtype); ``x_scale`` float32 0-dim (per tensor) or [M] (per token); ``w_scale`` float32 0-dim or [N] (per output
channel); ``bias`` [N] or None; the product is computed and returned in ``dtype`` (fp32/bf16/fp16) [M, N].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import FLOAT_DTYPES, check_tensor
from . import ops
from .fp8 import FORMAT_OF_DTYPE

CHUNK_ELEMENTS = 1 << 22  # weight values dequantized at a time by the reference (16 MB in fp32)


def _rows(scale: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, 1) if scale.dim() else scale


@ops.reference("fp8_linear")
def fp8_linear_reference(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None, fp8_dtype: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    """Reference of ``fp8_linear``: dequantize the activations once and the weight in row chunks (no float copy of
    a whole large weight), then ``F.linear`` in ``dtype``."""
    x = ops.dequantize_fp8(x_q, _rows(x_scale), fp8_dtype, dtype)  # (M, K)
    n, k = w_q.shape
    rows = max(1, CHUNK_ELEMENTS // max(1, k))
    if rows >= n:
        return F.linear(x, ops.dequantize_fp8(w_q, _rows(w_scale), fp8_dtype, dtype), bias)
    out = x.new_empty((x.shape[0], n))
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        ws = w_scale[r0:r1] if w_scale.dim() else w_scale
        w = ops.dequantize_fp8(w_q[r0:r1].contiguous(), _rows(ws), fp8_dtype, dtype)
        out[:, r0:r1] = F.linear(x, w, None if bias is None else bias[r0:r1])
    return out


def _bits(q: torch.Tensor, name: str, fp8_dtype: torch.dtype) -> torch.Tensor:
    # passed to the op as they are (the kernels read the bytes, the reference views them as fp8_dtype): a
    # ``view(torch.uint8)`` here would be an aten::view(dtype), which torch.jit.trace cannot record
    check_tensor(q, name, dtypes=(torch.uint8, fp8_dtype), ndim=2)
    return q.contiguous()


def fp8_linear(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None, *, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FP8 linear on codes (see the module docstring for shapes and dtypes). Raises TypeError/ValueError for a
    wrong dtype, mismatched K, scales of the wrong shape, or tensors on different devices. The scales are not
    inspected (no device sync): pass the ones the codes were made with."""
    if fp8_dtype not in FORMAT_OF_DTYPE:
        raise ValueError(f"fp8_dtype must be a torch float8 dtype, got {fp8_dtype}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    xb, wb = _bits(x_q, "x_q", fp8_dtype), _bits(w_q, "w_q", fp8_dtype)
    (m, k), (n, kw) = xb.shape, wb.shape
    if k != kw:
        raise ValueError(f"x_q [M, K] and w_q [N, K] must share K, got {tuple(xb.shape)} and {tuple(wb.shape)}")
    for name, s, size in (("x_scale", x_scale, m), ("w_scale", w_scale, n)):
        check_tensor(s, name, dtypes=(torch.float32,))
        if s.dim() > 1 or (s.dim() == 1 and s.shape[0] != size):
            raise ValueError(f"{name} must be 0-dim or have shape ({size},), got {tuple(s.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", dtypes=FLOAT_DTYPES + (torch.float64,), ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        bias = bias.to(dtype)
    for name, t in (("w_q", wb), ("x_scale", x_scale), ("w_scale", w_scale), ("bias", bias)):
        if t is not None and t.device != xb.device:
            raise ValueError(f"{name} is on {t.device} but x_q is on {xb.device}")
    return ops.fp8_linear(xb, x_scale.contiguous(), wb, w_scale.contiguous(), bias, fp8_dtype, dtype)

