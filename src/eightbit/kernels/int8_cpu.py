"""CPU fast paths for int8 matmul.

Measured on this project's 2-core AVX2 machine (no VNNI/AMX), 4096x4096 weight: ``torch._int_mm`` runs
at 8.9 / 223 / 3828 ms for M = 1 / 32 / 512, far slower than fp32. oneDNN's u8s8 GEMM saturates its int16
pair sums on AVX2 (wrong results for full-range u8 activations). The exact and fastest route found:
int8 values converted to float32 in cache-sized chunks of the weight, multiplied with the fp32 GEMM.
Products of int8 values are exact in fp32 and a sum of up to 1024 of them stays below 2**24, so
``int8_mm`` chunks K by 1024 and is bit-exact; ``int8_matmul_dequant`` chunks N (float32 accumulation,
rounding ~1e-7 relative, then rescaled) and never holds more than ~2 MB of float weight.
"""
from __future__ import annotations

import torch

from .dispatch import register_kernel

_EXACT_K = 1024  # 127 * 127 * 1024 < 2**24: exact float32 accumulation
_INT8_MAX = 127.0


@register_kernel("int8_mm", "cpu")
def int8_mm_cpu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 a @ b.T for int8 a [M, K], b [N, K] via exact float32 GEMMs over K chunks."""
    m, k = a.shape
    out = torch.zeros((m, b.shape[0]), dtype=torch.int32)
    for k0 in range(0, k, _EXACT_K):
        part = a[:, k0 : k0 + _EXACT_K].float() @ b[:, k0 : k0 + _EXACT_K].float().T
        out += part.to(torch.int32)
    return out


def _rows_per_chunk(k: int) -> int:
    return max(16, (2 << 20) // (4 * max(k, 1)))


@register_kernel("int8_matmul_dequant", "cpu")
def int8_matmul_dequant_cpu(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    """float32 [M, N] = (x_int8 @ w_int8.T) * outer(x_absmax, w_absmax) / 127**2, weight converted in chunks."""
    m, k = x_int8.shape
    n = w_int8.shape[0]
    xf = x_int8.float()  # (M, K) integer-valued
    out = torch.empty((m, n), dtype=torch.float32)
    rows = _rows_per_chunk(k)
    for n0 in range(0, n, rows):
        torch.matmul(xf, w_int8[n0 : n0 + rows].float().T, out=out[:, n0 : n0 + rows])
    out *= x_absmax.unsqueeze(1) / _INT8_MAX
    out *= w_absmax.unsqueeze(0) / _INT8_MAX
    return out
