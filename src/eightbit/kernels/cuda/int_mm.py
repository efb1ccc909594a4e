"""The cuBLAS alternative for LLM.int8()'s GEMM: ``torch._int_mm`` (int8 x int8 -> int32) where its CUDA
constraints hold, followed by the same dequantization, outlier sum, bias and cast as the Triton epilogue
(torch ops in the reference's order, so the result is bit-identical to the Triton path's).

``torch._int_mm(a [M, K], b [K, N])`` on CUDA requires M > 16 and K, N positive multiples of 8; its meta
function (used by FakeTensor, ``torch.compile``'s tracing) checks none of these, so a shape it would reject
on the device traces fine: :func:`int_mm_applies` checks them here, before any call.
"""
from __future__ import annotations

import torch

from ...functional.vectorwise import INT8_MAX
from ._common import device_guarded


def int_mm_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``torch._int_mm`` takes ``a`` [M, K] against ``b`` [N, K].T: 2-D, M > 16, K and N positive
    multiples of 8 (the dtypes are the caller's: int8 codes, or the float activations they come from)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        return False
    m, k = a.shape
    n = b.shape[0]
    return m > 16 and k > 0 and k % 8 == 0 and n > 0 and n % 8 == 0


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 [M, N] = a @ b.T through ``torch._int_mm`` (b.T is the column-major operand cuBLAS wants).
    ValueError where :func:`int_mm_applies` is false."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or not int_mm_applies(a, b):
        raise ValueError(f"torch._int_mm needs int8 a [M > 16, K % 8 == 0] and b [N % 8 == 0, K], got "
                         f"{a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}")
    return torch._int_mm(a.contiguous(), b.contiguous().t())


def _step(absmax: torch.Tensor) -> torch.Tensor:
    # absmax / 127 correctly rounded, as the Triton epilogue's div_rn: on CUDA, a tensor divided by a Python
    # number is computed as a product with the rounded reciprocal (1 ulp off for ~5 % of values)
    return absmax / torch.full_like(absmax, INT8_MAX)


def _dequant(acc, x_absmax, w_absmax):
    return acc.float() * _step(x_absmax).unsqueeze(1) * _step(w_absmax).unsqueeze(0)


def int8_matmul_dequant(x, x_absmax, w, w_absmax) -> torch.Tensor:
    """float32 [M, N]: :func:`int8_mm` dequantized by the outer product of the scales."""
    return _dequant(int8_mm(x, w), x_absmax, w_absmax)


@device_guarded
def int8_linear(x, weight, weight_absmax, bias, threshold) -> torch.Tensor:
    """LLM.int8() with the Triton activation preparation and the ``torch._int_mm`` GEMM."""
    from .int8 import prepare_with_outliers  # the same preparation as the Triton path

    x = x.contiguous()
    q, absmax, extra = prepare_with_outliers(x, weight, weight_absmax, threshold)
    out = _dequant(int8_mm(q, weight), absmax, weight_absmax)
    if extra is not None:
        out = out + extra
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
