"""CPU fast paths for int8 matmul.

Measured on this project's 2-core AVX2 machine (no VNNI/AMX), 4096x4096 weight: ``torch._int_mm`` runs
at 8.9 / 223 / 3828 ms for M = 1 / 32 / 512, far slower than fp32. oneDNN's u8s8 GEMM saturates its int16
pair sums on AVX2 (wrong results for full-range u8 activations). The exact and fastest route found:
int8 values converted to float32 in cache-sized chunks of the weight, multiplied with the fp32 GEMM.
Products of int8 values are exact in fp32 and a sum of up to 1024 of them stays below 2**24, so
``int8_mm`` chunks K by 1024 and is bit-exact; ``int8_matmul_dequant`` chunks N (float32 accumulation,
rounding ~1e-7 relative, then rescaled) and never holds more than ~2 MB of float weight.

Faster still, for a weight used many times (``Linear8bitLt`` caches it): oneDNN's u8s8 GEMM on a weight
prepacked once, kept exact by feeding it activations it cannot saturate on. The int8 activations are split
by sign into two u8 matrices, ``x = pos - neg`` with ``pos, neg`` in [0, 128]; every int16 pair sum then
stays within 2 * 128 * 128 = 32768 (the only reachable -32768 still fits), so the int32 accumulators are
exact. Both halves run as one GEMM with 2M rows (at small M the weight is read once for both).
Measured on the noisy 2-core machine (4096x4096, M = 1 / 32 / 512): sign-split oneDNN 31 / 47 / 844 ms vs
chunked fp32 272 / 209 / 2384 ms under the same load (load average ~10); see docs/llm_int8.md.
"""
from __future__ import annotations

import torch

from . import native_cpu
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


# ---------------------------------------------------------------- oneDNN u8s8 on a prepacked weight
def _onednn_exact() -> bool:
    """Probe: oneDNN ops present and exact on worst-case sign-split inputs (full-range weights)."""
    w = torch.tensor([[127] * 8, [-128] * 8, [127, -128] * 4], dtype=torch.int8)
    x = torch.tensor([[-128] * 8, [127] * 8, [-128, 127] * 4, [5, -7, 0, 1, -1, 127, -128, 3]], dtype=torch.int8)
    got = _split_gemm(x, torch.full((4,), 127.0), torch.ops.onednn.qlinear_prepack(w, None), torch.full((3,), 127.0))
    return bool(torch.equal(got.double(), x.double() @ w.double().T))


def _split_gemm(x_int8: torch.Tensor, x_absmax: torch.Tensor, packed: torch.Tensor, w_absmax: torch.Tensor) -> torch.Tensor:
    m = x_int8.shape[0]
    n = w_absmax.shape[0]
    # (2M, K): positive parts, then negated negative parts (via int16: -(-128) overflows int8)
    both = torch.cat([x_int8.clamp(min=0).to(torch.uint8), x_int8.clamp(max=0).to(torch.int16).neg_().to(torch.uint8)])
    # Unit scales: both halves come back as integer-valued float32 (exact below 2**24), so their
    # difference is the exact int32 product; the scales are applied after it, as in the reference.
    ones = torch.ones(n, dtype=torch.float32)
    out = torch.ops.onednn.qlinear_pointwise(
        both, 1.0, 0, packed, ones, torch.zeros(n, dtype=torch.long), None, 1.0, 0, torch.float32, "none", [], ""
    )  # (2M, N)
    acc = out[:m].sub_(out[m:])  # (M, N)
    return acc.mul_(x_absmax.unsqueeze(1) / _INT8_MAX).mul_(w_absmax.unsqueeze(0) / _INT8_MAX)


@register_kernel("int8_prepack", "cpu", available=_onednn_exact)
def prepack_int8_cpu(w_int8: torch.Tensor) -> torch.Tensor:
    """oneDNN-packed copy of an int8 weight [N, K] (an opaque mkldnn tensor; not for state_dict)."""
    return torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)


@register_kernel("int8_matmul_dequant_packed", "cpu", available=_onednn_exact)
def int8_matmul_dequant_packed_cpu(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, packed: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    """float32 [M, N] = (x_int8 @ W.T) * outer(x_absmax, w_absmax) / 127**2 on a weight from ``prepack_int8_cpu``."""
    return _split_gemm(x_int8, x_absmax, packed, w_absmax)


# ---------------------------------------------------------------- native exact kernel (any number of rows)
_NATIVE_MAX_K = (2**31 - 1) // (128 * 127)  # int32 accumulators stay exact below this many products
_FUSED_OUTLIER_ROWS = 8


def _native_available() -> bool:
    return native_cpu.library() is not None


@register_kernel("int8_matmul_dequant_outliers", "cpu", available=_native_available)
def int8_matmul_dequant_outliers_cpu(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor,
    outlier_x: torch.Tensor | None = None, outlier_cols: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """float32 [M, N] = (x_int8 @ w_int8.T) * outer(x_absmax, w_absmax) / 127**2 with exact int32 accumulation,
    for ``x_int8`` in [-127, 127] (vector-wise quantized activations). With ``outlier_x`` (float32 [M, C]) and
    ``outlier_cols`` (int64 [C]) it also adds LLM.int8()'s float part, ``outlier_x @ dequantized(w_int8[:,
    outlier_cols]).T``, while each weight row is in cache. Native C (``eb_int8_gemm`` in csrc/int8_cpu.c): up
    to 3 rows a memory-bound pass over the weight rows in place; from 4 rows per-thread packed 16-column panels
    under a vertically accumulating 4x16 register tile (the panel is per call: no packed weight copy is kept).
    Returns None when it does not apply (K beyond the exact int32 range) so the caller uses another path.
    Registered only where the native library builds."""
    m, k = x_int8.shape
    if m == 0 or k > _NATIVE_MAX_K:
        return None
    lib = native_cpu.library()
    n = w_int8.shape[0]
    x = x_int8.contiguous()
    w = w_int8.contiguous()
    xs = (x_absmax.float() / _INT8_MAX).contiguous()
    ws = (w_absmax.float() / _INT8_MAX).contiguous()
    n_out = 0 if outlier_cols is None else outlier_cols.numel()
    # Few rows: the outlier columns are summed inside the weight pass (no second touch of the weight). More
    # rows: that scalar per-output sum costs more than one small fp32 GEMM over the gathered columns.
    fused = n_out and m <= _FUSED_OUTLIER_ROWS
    xo = outlier_x.float().contiguous() if n_out else None
    cols = outlier_cols.to(torch.int64).contiguous() if n_out else None
    out = native_cpu.empty((m, n), dtype=torch.float32)
    ptr = native_cpu.ptr
    lib.eb_int8_gemm(ptr(x), ptr(w), ptr(xs), ptr(ws), ptr(xo) if fused else None, ptr(cols) if fused else None,
                     n_out if fused else 0, ptr(out), m, k, n)
    if n_out and not fused:
        w_cols = w.index_select(1, cols).float() * (w_absmax.float().unsqueeze(1) / _INT8_MAX)  # (N, C)
        out += xo @ w_cols.T  # (M, N)
    return out


@register_kernel("int8_prepare_activations", "cpu", available=_native_available)
def int8_prepare_activations_cpu(x: torch.Tensor, threshold: float):
    """LLM.int8()'s activation side in one native pass over float32 ``x`` [M, K]: (int8 codes with the outlier
    columns zeroed, float32 absmax per row, int64 outlier column indices), equal to ``outlier_columns`` +
    ``quantize_vectorwise`` of the outlier-zeroed input. None when the reference must run (other dtypes,
    non-contiguous input, or a row with NaN/Inf or a subnormal scale, which the reference handles specially)."""
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.device.type != "cpu":
        return None
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8)
    absmax = torch.empty(m, dtype=torch.float32)
    flags = torch.empty(k, dtype=torch.uint8)
    ptr = native_cpu.ptr
    if native_cpu.library().eb_int8_prepare(ptr(x), m, k, float(threshold), ptr(q), ptr(absmax), ptr(flags)):
        return None
    return q, absmax, flags.nonzero().squeeze(1)
