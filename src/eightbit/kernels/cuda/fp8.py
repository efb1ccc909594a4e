"""CUDA kernel of ``fp8_linear``: a real FP8 GEMM with ``torch._scaled_mm`` (FP8 tensor cores, float32
accumulation) on devices of compute capability >= 8.9 (Ada, Hopper and later); elsewhere, or for shapes and
formats it does not take, the op's reference (dequantize, then a float GEMM) runs.

What ``torch._scaled_mm`` takes, checked here because its meta function (FakeTensor, ``torch.compile``) does not
check all of it: ``a`` [M, K] row-major and ``b`` [K, N] column-major (the transpose of a contiguous [N, K]
weight: no copy), K and N multiples of 16, float8 E4M3 codes (E5M2 x E5M2 is not supported, so E5M2 layers take
the reference); float32 scales either both per tensor (any output dtype) or row-wise, ``scale_a`` [M, 1] and
``scale_b`` [1, N], which on CUDA requires a bfloat16 output: row-wise results are rounded to bfloat16 before the
cast to the layer's compute dtype (documented difference from the float32 reference, bounded in the tests).
"""
from __future__ import annotations

import torch

from ._common import capability as device_capability

MIN_CAPABILITY = (8, 9)


def scaled_mm_applies(x_q: torch.Tensor, w_q: torch.Tensor, fp8_dtype: torch.dtype,
                      capability: tuple[int, int] | None) -> bool:
    """Whether ``torch._scaled_mm`` serves this product on a device of ``capability`` (None: not a CUDA device)."""
    if capability is None or tuple(capability) < MIN_CAPABILITY or fp8_dtype != torch.float8_e4m3fn:
        return False
    (m, k), n = x_q.shape, w_q.shape[0]
    return m > 0 and k > 0 and k % 16 == 0 and n > 0 and n % 16 == 0


def scaled_mm_args(x_q, x_scale, w_q, w_scale, fp8_dtype):
    """(a, b, scale_a, scale_b, out_dtype or None) as ``torch._scaled_mm`` takes them; out_dtype None means the
    caller's dtype (per-tensor scales), bfloat16 for row-wise scales."""
    a = x_q.view(fp8_dtype)  # (M, K) row-major
    b = w_q.view(fp8_dtype).t()  # (K, N) column-major view of the (N, K) weight
    m, n = a.shape[0], b.shape[1]
    if x_scale.dim() == 0 and w_scale.dim() == 0:
        return a, b, x_scale, w_scale, None
    sa = x_scale.float().expand(m).reshape(m, 1).contiguous()
    sb = w_scale.float().expand(n).reshape(1, n).contiguous()
    return a, b, sa, sb, torch.bfloat16


def fp8_linear(x_q, x_scale, w_q, w_scale, bias, fp8_dtype, dtype, *, capability=None):
    """Kernel of ``fp8_linear``; ``capability`` defaults to the input's CUDA device's. NotImplemented (the
    reference runs) where :func:`scaled_mm_applies` is false."""
    if capability is None:
        capability = device_capability(x_q)
    if not scaled_mm_applies(x_q, w_q, fp8_dtype, capability):
        return NotImplemented
    a, b, sa, sb, out_dtype = scaled_mm_args(x_q, x_scale, w_q, w_scale, fp8_dtype)
    out = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype or dtype).to(dtype)
    return out if bias is None else out + bias.to(dtype)
