"""Vector-wise (row-wise) absmax int8 quantization, the building block of LLM.int8().

Non-finite input, by design: a vector containing NaN or +-Inf gets ``absmax`` NaN or Inf and all-zero
codes, so it dequantizes to NaN (0 * NaN, 0 * Inf) while every other vector is unaffected. NaN never
spreads across vectors, and a non-finite vector is never silently turned into finite numbers.
"""
from __future__ import annotations

import math

import torch

from .._checks import FLOAT_DTYPES, check_number, check_tensor
from . import ops

INT8_MAX = 127.0
_SUBNORMAL_STEP = 2.0**-100  # below this absmax the float32 step loses precision: quantize in float64


def _check_dim(x: torch.Tensor, dim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim, got a scalar")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for shape {tuple(x.shape)}, got {dim}")
    return dim


def quantize_rows(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference row quantization of float32 ``xf`` [M, K]: (int8 codes ``round(127 x / absmax)``, float32
    absmax [M]). Zero rows give zero codes and absmax 0; see the module docstring for NaN/Inf."""
    if xf.shape[1] == 0:  # zero-length vectors: nothing to scale
        return torch.zeros(xf.shape, dtype=torch.int8, device=xf.device), xf.new_zeros(xf.shape[0])
    absmax = xf.abs().amax(dim=1, keepdim=True)  # NaN/Inf propagate into this vector's absmax only
    # Divide by the step rather than multiply by 127/absmax: 127/absmax overflows for absmax < 3.7e-37.
    # 0/0 (zero vector), x/Inf and anything/NaN give NaN or 0, which become code 0.
    q = xf / (absmax / INT8_MAX)
    small = (absmax < _SUBNORMAL_STEP) & (absmax > 0)  # a subnormal step loses precision: those rows in float64
    if bool(small.any()):
        q = torch.where(small, xf.double() / (absmax.double() / INT8_MAX), q.double())
    q = torch.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, absmax.squeeze(1)


@ops.reference("int8_vectorwise_quant")
def int8_vectorwise_quant_reference(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of the ``int8_vectorwise_quant`` op (LLM.int8()'s activation side) for float ``x`` [M, K]:
    the columns where any ``|x| >= threshold`` (``threshold > 0``; NaN never counts) are the outlier columns,
    returned as a bool mask [K]; the other columns are quantized per row (int8 [M, K], outlier columns zero)
    with float32 absmax [M] over the non-outlier columns."""
    xf = x.float()
    if threshold > 0 and xf.numel():
        mask = (xf.abs() >= threshold).any(dim=0)  # (K,)
        xf = xf.masked_fill(mask, 0.0)
    else:
        mask = torch.zeros(xf.shape[1], dtype=torch.bool, device=x.device)
    q, absmax = quantize_rows(xf)
    return q, absmax, mask


def quantize_vectorwise(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to int8 with one absmax per vector along ``dim``.

    Returns ``(q, absmax)``: ``q`` int8 of ``x.shape`` with ``q = round(127 * x / absmax)``; ``absmax``
    float32 of ``x.shape`` with ``dim`` removed. All-zero vectors give zero codes and absmax 0 (no NaN).
    ``x``: fp32/bf16/fp16, any shape, contiguous or not. Raises TypeError/ValueError on bad input.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES)
    dim = _check_dim(x, dim) % x.dim()
    moved = x.movedim(dim, -1)
    lead = moved.shape[:-1]
    rows = moved.reshape(math.prod(lead), moved.shape[-1]).contiguous()  # explicit: reshape(-1, 0) is ambiguous
    q, absmax, _ = ops.int8_vectorwise_quant(rows, 0.0)
    return q.view(*lead, moved.shape[-1]).movedim(-1, dim), absmax.view(lead)


def int8_vectorwise_quant_columns(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLM.int8()'s activation preparation for ``x`` [..., K] (fp32/bf16/fp16): ``(q, absmax, outlier_mask)``
    with q int8 [T, K] (T = rows of x flattened; outlier columns zeroed), absmax float32 [T] and the bool
    outlier column mask [K] (columns with any ``|x| >= threshold``; ``threshold=0`` gives none)."""
    check_tensor(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    return ops.int8_vectorwise_quant(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous(), threshold)


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
