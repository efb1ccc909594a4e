"""Triton kernels of LLM.int8(): activation preparation (outlier columns, row absmax, int8 codes) and the int8
GEMM with exact int32 accumulation and the dequantization, outlier sum, bias and output cast in its epilogue.

Each launcher takes tensors on any device Triton runs on (CUDA; CPU tensors under ``TRITON_INTERPRET=1``, which
is how the tests compare them with the references) and returns what the op returns; the registration for
``cuda`` is in :mod:`eightbit.kernels.cuda`. Arithmetic follows the references operation by operation
(``eightbit.functional.int8`` / ``.vectorwise``), so codes, absmax and the dequantized int8 product are
bit-identical; only the float32 outlier product (a cuBLAS/torch matmul) sums in another order.

Tiles: ``tl.dot`` on int8 needs K >= 32 per tile and M >= 16 (the MMA shapes), so small M runs a 16-row tile;
:data:`GEMM_CONFIGS` lists every configuration (the compile test builds each one for sm_80 and sm_90 and checks
the int8 MMA instructions in the PTX).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...functional.int8 import dequantize_weight_columns
from ._common import (LAUNCH, arg, capability, device_guarded, kind_of, load_f32, round_half_even, round_half_even_f64,
                      store_f32)

SUBNORMAL_STEP = tl.constexpr(2.0**-100)  # as eightbit.functional.vectorwise: below it, the step in float64

# name -> (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); chosen by M in gemm_config()
GEMM_CONFIGS: dict[str, tuple[int, int, int, int, int, int]] = {
    "m16": (16, 64, 128, 1, 4, 4),    # decode (M <= 16): weight-streaming, memory-bound
    "m64": (64, 128, 64, 4, 4, 4),
    "m128": (128, 128, 64, 8, 8, 3),  # prefill / batches
}

EPI_INT32, EPI_DEQUANT, EPI_LINEAR = 0, 1, 2


def gemm_config(m: int) -> str:
    """The configuration name for ``m`` rows of activations."""
    return "m16" if m <= 16 else ("m64" if m <= 64 else "m128")


@triton.jit
def outlier_columns_kernel(x_ptr, flags_ptr, M, K, threshold, KIND: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """flags[k] = 1 where any |x[:, k]| >= threshold (NaN never counts); a grid of (M tiles, K tiles): M on the
    first axis, whose limit is 2**31 - 1 programs (the second's is 65535)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    x = load_f32(x_ptr, rm[:, None].to(tl.int64) * K + rk[None, :], mask, KIND)
    hit = tl.max((tl.abs(x) >= threshold).to(tl.int32), axis=0)
    tl.atomic_max(flags_ptr + rk, hit, mask=(rk < K) & (hit > 0))


@triton.jit
def _row_tile(x_ptr, flags_ptr, base, rk, K, HAS_FLAGS: tl.constexpr, KIND: tl.constexpr):
    """float32 values of columns ``rk`` of the row at ``base``, outlier columns (flags != 0) zeroed."""
    m = rk < K
    x = load_f32(x_ptr, base + rk, m, KIND)
    if HAS_FLAGS:
        x = tl.where(tl.load(flags_ptr + rk, mask=m, other=0) != 0, 0.0, x)
    return x


@triton.jit
def row_quant_kernel(x_ptr, flags_ptr, q_ptr, absmax_ptr, K, HAS_FLAGS: tl.constexpr, KIND: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """One row per program: absmax over the non-outlier columns (NaN/Inf flag the row), then
    q = round(x / (absmax / 127)) clamped to +-127, zero for outlier columns and for non-finite quotients."""
    row = tl.program_id(0).to(tl.int64)
    base = row * K
    amax = tl.zeros((), dtype=tl.float32)
    nan = tl.zeros((), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _row_tile(x_ptr, flags_ptr, base, rk, K, HAS_FLAGS, KIND)
        nan = tl.maximum(nan, tl.max((x != x).to(tl.int32), axis=0))  # tl.max drops NaN: count them apart
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=0))
    amax = tl.where(nan > 0, float("nan"), amax)
    tl.store(absmax_ptr + row, amax)
    small = (amax < SUBNORMAL_STEP) & (amax > 0)
    step = tl.div_rn(amax, 127.0)
    step64 = amax.to(tl.float64) / 127.0
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        m = rk < K
        x = _row_tile(x_ptr, flags_ptr, base, rk, K, HAS_FLAGS, KIND)
        if small:  # a subnormal step loses precision in float32: quantize this row in float64
            v64 = x.to(tl.float64) / step64
            v64 = tl.where((v64 != v64) | (tl.abs(v64) == float("inf")), 0.0, v64)
            q = tl.minimum(tl.maximum(round_half_even_f64(tl.minimum(tl.maximum(v64, -128.0), 128.0)), -127.0),
                           127.0).to(tl.int32)
        else:
            v = tl.div_rn(x, step)
            v = tl.where((v != v) | (tl.abs(v) == float("inf")), 0.0, v)
            q = tl.minimum(tl.maximum(round_half_even(tl.minimum(tl.maximum(v, -128.0), 128.0)), -127.0),
                           127.0).to(tl.int32)
        tl.store(q_ptr + base + rk, q.to(tl.int8), mask=m)


@triton.jit
def int8_gemm_kernel(a_ptr, b_ptr, c_ptr, a_absmax_ptr, b_absmax_ptr, extra_ptr, bias_ptr, M, N, K,
                     EPILOGUE: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_BIAS: tl.constexpr,
                     OUT_KIND: tl.constexpr, BIAS_KIND: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C = A @ B.T for int8 A [M, K], B [N, K], int32 accumulation; epilogue 0: int32 C, 1: float32
    C * (a_absmax / 127) * (b_absmax / 127), 2: that + extra (float32 [M, N]) + bias, stored as OUT_KIND."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)  # groups of GROUP_M row tiles share B tiles in L2
    first_m = group * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_rows = rm.to(tl.int64)[:, None] * K
    b_cols = rn.to(tl.int64)[None, :] * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + a_rows + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        b = tl.load(b_ptr + b_cols + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    if EPILOGUE == 0:
        tl.store(c_ptr + offs, acc, mask=out_mask)
    else:
        sa = tl.div_rn(tl.load(a_absmax_ptr + rm, mask=rm < M, other=0.0), 127.0)
        sb = tl.div_rn(tl.load(b_absmax_ptr + rn, mask=rn < N, other=0.0), 127.0)
        y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
        if HAS_EXTRA:
            y = y + tl.load(extra_ptr + offs, mask=out_mask, other=0.0)
        if HAS_BIAS:
            y = y + load_f32(bias_ptr, rn, rn < N, BIAS_KIND)[None, :]
        if EPILOGUE == 1:
            tl.store(c_ptr + offs, y, mask=out_mask)
        else:
            store_f32(c_ptr, offs, y, out_mask, OUT_KIND)


# ---------------------------------------------------------------- launchers
def outlier_flags(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """int32 [K]: 1 for the columns of float ``x`` [M, K] with any |x| >= threshold (> 0)."""
    m, k = x.shape
    flags = torch.zeros(k, dtype=torch.int32, device=x.device)
    if m and k:
        bm, bk = 32, 128
        outlier_columns_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bk))](
            arg(x), flags, m, k, float(threshold), KIND=kind_of(x.dtype), BLOCK_M=bm, BLOCK_K=bk, **LAUNCH)
    return flags


@device_guarded
def vectorwise_quant(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel of ``int8_vectorwise_quant``: (int8 codes [M, K], float32 absmax [M], bool outlier mask [K])."""
    return _prepare(x.contiguous(), threshold)[:3]


def _prepare(x, threshold):
    m, k = x.shape
    flags = outlier_flags(x, threshold) if threshold > 0 else None
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    absmax = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        row_quant_kernel[(m,)](arg(x), flags if flags is not None else absmax, q, absmax, k,
                               HAS_FLAGS=flags is not None, KIND=kind_of(x.dtype),
                               BLOCK_K=min(1024, triton.next_power_of_2(max(k, 16))), **LAUNCH)
    mask = flags.bool() if flags is not None else torch.zeros(k, dtype=torch.bool, device=x.device)
    return q, absmax, mask, flags


def _gemm(a, b, a_absmax, b_absmax, epilogue, extra=None, bias=None, out_dtype=torch.float32, config=None):
    m, k = a.shape
    n = b.shape[0]
    out_dtype = torch.int32 if epilogue == EPI_INT32 else out_dtype
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    bm, bn, bk, group, warps, stages = GEMM_CONFIGS[config or gemm_config(m)]
    dummy = a_absmax if a_absmax is not None else out
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    int8_gemm_kernel[grid](
        a, b, arg(out), dummy, b_absmax if b_absmax is not None else dummy,
        extra if extra is not None else dummy, arg(bias) if bias is not None else dummy, m, n, k,
        EPILOGUE=epilogue, HAS_EXTRA=extra is not None, HAS_BIAS=bias is not None,
        OUT_KIND=kind_of(out_dtype) if epilogue == EPI_LINEAR else 0,
        BIAS_KIND=kind_of(bias.dtype) if bias is not None else 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages, **LAUNCH)
    return out


def gemm_applies(a: torch.Tensor) -> bool:
    """Whether the int8 GEMM serves an [M, K] operand here: K >= 1 (K = 0 runs the reference) and, on a GPU,
    int8 tensor cores (compute capability >= 8.0; the kernel does not compile for sm_75 and older)."""
    return a.shape[1] > 0 and (not a.is_cuda or capability(a) >= (8, 0))


@device_guarded
def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kernel of ``int8_mm``: exact int32 [M, N] = a [M, K] @ b [N, K].T (int8); NotImplemented where
    :func:`gemm_applies` is false."""
    if not gemm_applies(a):
        return NotImplemented
    return _gemm(a.contiguous(), b.contiguous(), None, None, EPI_INT32)


@device_guarded
def int8_matmul_dequant(x, x_absmax, w, w_absmax) -> torch.Tensor:
    """Kernel of ``int8_matmul_dequant``: float32 [M, N], dequantization fused in the GEMM's epilogue."""
    if not gemm_applies(x):
        return NotImplemented
    return _gemm(x.contiguous(), w.contiguous(), x_absmax.contiguous(), w_absmax.contiguous(), EPI_DEQUANT)


@device_guarded
def int8_linear(x, weight, weight_absmax, bias, threshold) -> torch.Tensor:
    """Kernel of ``int8_linear``: prepare the activations, then one GEMM whose epilogue adds the float32
    outlier product (outlier columns of x times the dequantized weight columns) and the bias and casts to
    x.dtype. Finding which columns are outliers costs one device-to-host sync (their number sizes the product),
    so a graph with outliers cannot be captured as a CUDA graph."""
    if not gemm_applies(x):
        return NotImplemented
    x = x.contiguous()
    q, absmax, extra = prepare_with_outliers(x, weight, weight_absmax, threshold)
    return _gemm(q, weight.contiguous(), absmax, weight_absmax.contiguous(), EPI_LINEAR, extra=extra,
                 bias=bias.contiguous() if bias is not None else None, out_dtype=x.dtype)


def prepare_with_outliers(x, weight, weight_absmax, threshold):
    """LLM.int8()'s activation side for contiguous ``x`` [M, K]: (int8 codes, float32 row absmax, the float32
    outlier product [M, N] or None when no column crosses ``threshold``), shared by both GEMM paths."""
    q, absmax, _, flags = _prepare(x, threshold)
    extra = None
    if flags is not None:
        cols = flags.nonzero().squeeze(1)
        if cols.numel():
            extra = x.index_select(1, cols).float() @ dequantize_weight_columns(weight, weight_absmax, cols).T
    return q, absmax, extra
