"""Vector-wise (row-wise) absmax int8 quantization, the building block of LLM.int8().

Non-finite input, by design: a vector containing NaN or +-Inf gets ``absmax`` NaN or Inf and all-zero
codes, so it dequantizes to NaN (0 * NaN, 0 * Inf) while every other vector is unaffected. NaN never
spreads across vectors, and a non-finite vector is never silently turned into finite numbers.
"""
from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_tensor

INT8_MAX = 127.0


def _check_dim(x: torch.Tensor, dim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim, got a scalar")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for shape {tuple(x.shape)}, got {dim}")
    return dim


def quantize_vectorwise(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to int8 with one absmax per vector along ``dim``.

    Returns ``(q, absmax)``: ``q`` int8 of ``x.shape`` with ``q = round(127 * x / absmax)``; ``absmax``
    float32 of ``x.shape`` with ``dim`` removed. All-zero vectors give zero codes and absmax 0 (no NaN).
    ``x``: fp32/bf16/fp16, any shape, contiguous or not. Raises TypeError/ValueError on bad input.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES)
    dim = _check_dim(x, dim)
    xf = x.float()
    if xf.shape[dim] == 0:  # zero-length vectors: nothing to scale
        return torch.zeros(x.shape, dtype=torch.int8, device=x.device), xf.new_zeros(xf.sum(dim).shape)
    absmax = xf.abs().amax(dim=dim, keepdim=True)  # NaN/Inf propagate into this vector's absmax only
    # Divide by the step rather than multiply by 127/absmax: 127/absmax overflows for absmax < 3.7e-37.
    # 0/0 (zero vector), x/Inf and anything/NaN give NaN or 0, which become code 0.
    step = absmax / INT8_MAX
    if bool(((absmax < 2.0**-100) & (absmax > 0)).any()):  # a subnormal step loses precision: use float64
        q = xf.double() / (absmax.double() / INT8_MAX)
    else:
        q = xf / step
    q = torch.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, absmax.squeeze(dim)


def dequantize_vectorwise(
    q: torch.Tensor, absmax: torch.Tensor, dim: int = -1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of ``quantize_vectorwise``: ``q * absmax / 127`` in ``dtype`` (shape of ``q``).

    Raises TypeError/ValueError on bad dtypes or shapes, ValueError when ``absmax`` is on another device."""
    check_tensor(q, "q", dtypes=(torch.int8,))
    check_tensor(absmax, "absmax", dtypes=(torch.float32,))
    if absmax.device != q.device:
        raise ValueError(f"absmax is on device {absmax.device} but q is on {q.device}: both must share one device")
    dim = _check_dim(q, dim)
    expected = q.shape[:dim % q.dim()] + q.shape[dim % q.dim() + 1 :]
    if absmax.shape != expected:
        raise ValueError(f"absmax must have shape {tuple(expected)} for q of shape {tuple(q.shape)} and dim={dim}, got {tuple(absmax.shape)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of float32/bfloat16/float16, got {dtype}")
    # q / 127 <= 1 exactly, so absmax = float32 max dequantizes to max, not inf
    return (q.float() / INT8_MAX * absmax.unsqueeze(dim)).to(dtype)
