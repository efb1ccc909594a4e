"""CPU kernels of the LLM.int8() ops.

Measured on this project's 2-core AVX2 machine (no VNNI/AMX), 4096x4096 weight: ``torch._int_mm`` runs at
8.9 / 223 / 3828 ms for M = 1 / 32 / 512, far slower than fp32, and oneDNN's u8s8 GEMM saturates its int16 pair
sums on AVX2. Two exact routes are used instead:

* ``eb_int8_gemm`` (native C, csrc/int8_cpu.c and int8_panels.c): exact int32 accumulation for activations in
  [-127, 127]; for few rows (decode, small batches) one pass over the weight rows in place, each weight vector
  multiplied with up to 4 activation rows in registers; for many rows per-thread packed 16-column panels under a
  register tile (8x16 at 512 bits with AVX-512 VNNI, the last tile of rows up to 12x16; else 4x16).
* Without the native library (or for the -128 code the native GEMM does not take): int8 values converted to
  float32 in K chunks of 1024 and multiplied with the fp32 GEMM: products of int8 values are exact in float32
  and a sum of 1024 of them stays below 2**24, so the int32 result is exact.

``int8_linear`` is the whole LLM.int8() forward in one op and one native call (``eb_int8_linear``): the outlier
scan and vector-wise quantization (written straight into the GEMM's activation layout), then the GEMM with the
outlier columns' float part and the bias in its epilogue, summed in the reference's order
(``functional.int8.outlier_product``), so the result equals the reference bit for bit. Rows holding NaN/Inf or a
subnormal scale go to the reference, which handles them specially. Where a C++ compiler is, the op's kernel is the
C++ one of ``cpp/int8_linear_op.cpp`` (:mod:`.torch_ext`), which makes the same native call without the round trip
into Python and hands this module's ``int8_linear_cpu`` what it does not take.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import torch

from ...functional.int8 import SEQUENTIAL_OUTLIER_COLUMNS, dequantize_weight_columns, outlier_product
from ..registry import register
from . import native, torch_ext

_EXACT_K = 1024  # 127 * 128 * 1024 < 2**24: exact float32 accumulation
_INT8_MAX = 127.0
_NATIVE_MAX_K = (2**31 - 1) // (128 * 127)  # int32 accumulators stay exact below this many products


@register("int8_mm", "cpu")
def int8_mm_cpu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 a @ b.T for int8 a [M, K], b [N, K] via exact float32 GEMMs over K chunks."""
    m, k = a.shape
    out = torch.zeros((m, b.shape[0]), dtype=torch.int32)
    for k0 in range(0, k, _EXACT_K):
        part = a[:, k0 : k0 + _EXACT_K].float() @ b[:, k0 : k0 + _EXACT_K].float().T
        out += part.to(torch.int32)
    return out


def native_gemm(x: torch.Tensor, x_absmax: torch.Tensor, w: torch.Tensor, w_absmax: torch.Tensor) -> torch.Tensor:
    """float32 [M, N] = (x @ w.T) * outer(x_absmax, w_absmax) / 127**2 with exact int32 accumulation, for
    contiguous int8 ``x`` in [-127, 127] and K <= _NATIVE_MAX_K (``eb_int8_gemm``)."""
    m, k = x.shape
    n = w.shape[0]
    xs = (x_absmax.float() / _INT8_MAX).contiguous()
    ws = (w_absmax.float() / _INT8_MAX).contiguous()
    out = native.empty((m, n), dtype=torch.float32)
    p = native.ptr
    native.library().eb_int8_gemm(p(x), p(w), p(xs), p(ws), p(out), m, k, n)
    return out


@register("int8_matmul_dequant", "cpu")
def int8_matmul_dequant_cpu(x_int8, x_absmax, w_int8, w_absmax) -> torch.Tensor:
    """float32 [M, N] = (x_int8 @ w_int8.T) * outer(x_absmax, w_absmax) / 127**2, exact int32 products."""
    m, k = x_int8.shape
    if m and 0 < k <= _NATIVE_MAX_K and native.library() is not None and bool(x_int8.min() > -128):
        return native_gemm(x_int8.contiguous(), x_absmax, w_int8.contiguous(), w_absmax)
    acc = int8_mm_cpu(x_int8, w_int8).float()
    return acc * (x_absmax.unsqueeze(1) / _INT8_MAX) * (w_absmax.unsqueeze(0) / _INT8_MAX)


@functools.lru_cache(maxsize=64)  # asked on every forward; building the float32 tensor cost ~3 us a call
def _threshold_fits(threshold: float) -> bool:
    """Whether the C float the kernels take keeps the threshold's meaning: a positive one below float32's
    smallest subnormal would become 0 (decomposition off) where the reference flags every column."""
    return threshold <= 0 or float(torch.tensor(threshold, dtype=torch.float32)) > 0


def prepare(x: torch.Tensor, threshold: float):
    """``eb_int8_prepare`` on float32 ``x`` [M, K]: (int8 codes, outlier columns zeroed; float32 absmax [M]; uint8
    outlier flags [K]), or None when the reference must run (a row with NaN/Inf or a subnormal scale)."""
    xf = (x if x.dtype == torch.float32 else x.float()).contiguous()
    m, k = xf.shape
    q = torch.empty((m, k), dtype=torch.int8)
    absmax = torch.empty(m, dtype=torch.float32)
    flags = torch.empty(k, dtype=torch.uint8)
    p = native.ptr
    if native.library().eb_int8_prepare(p(xf), m, k, float(threshold), p(q), p(absmax), p(flags)):
        return None
    return q, absmax, flags


@register("int8_vectorwise_quant", "cpu", available=native.available)
def int8_vectorwise_quant_cpu(x: torch.Tensor, threshold: float):
    """Kernel of ``int8_vectorwise_quant``: one native pass for the outlier scan and the row quantization."""
    if x.numel() == 0 or native.library() is None or not _threshold_fits(threshold):
        return NotImplemented
    prepared = prepare(x, threshold)
    if prepared is None:
        return NotImplemented
    q, absmax, flags = prepared
    return q, absmax, flags.view(torch.bool)


_SCRATCH_KEEP = 64 << 20  # largest scratch buffer kept between calls
_local = threading.local()


def _scratch(nbytes: int) -> torch.Tensor:
    """A uint8 buffer of at least ``nbytes`` for one call's temporaries (nothing returned aliases it), reused by
    the calling thread's next call (up to _SCRATCH_KEEP bytes). Why: between other ops' allocations a fresh buffer
    of this size is often a fresh mapping whose pages fault in again (MiniLM batch 64, the model run alone: 14.6
    thousand page faults and 40 ms of system time per forward before, 0.7 thousand and 6 ms after)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes <= _SCRATCH_KEEP:
            _local.scratch = buf
    return buf


_GUESSES_KEPT = 4096  # weights whose last outlier flags are kept per thread


def _flag_guess(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The calling thread's uint8 buffer [k + 1] of the outlier flags last found for ``weight`` (``[k]`` = 1 once
    filled), which ``eb_int8_linear`` reads as its guess and overwrites with the flags it finds. Why: outlier
    features stay in the same columns call after call, and with a right guess the native prepare reads x once,
    without the column maxima (MiniLM's 36 layers, kernel only: 40.4 -> 37.0 ms, then about 1 % more). A wrong or
    stale guess (a freed weight's address reused) costs the unguessed call's two passes on top: the kernel checks
    the guess as it goes and never uses a wrong one."""
    guesses = getattr(_local, "guesses", None)
    if guesses is None or len(guesses) > _GUESSES_KEPT:
        guesses = _local.guesses = {}
    key = (weight.data_ptr(), k)
    buf = guesses.get(key)
    if buf is None:
        buf = guesses[key] = torch.zeros(k + 1, dtype=torch.uint8)
    return buf


@functools.lru_cache(maxsize=256)  # a model repeats a few shapes; asking cost ~2 us a call
def _layout(m: int, k: int, n: int, cap: int) -> tuple[tuple[int, ...], int]:
    """Offsets and total bytes of one int8_linear call's scratch, from ``eb_int8_linear_scratch`` (the one
    definition, which the C++ kernel asks too): q | xs | ws | flags | cols | xo | wo, each 64-byte aligned."""
    offsets = (ctypes.c_int64 * 7)()
    total = native.library().eb_int8_linear_scratch(m, k, n, cap, offsets)
    return tuple(offsets), total


# Where the C++ kernel of the op loads (torch_ext), it serves eightbit::int8_linear and this one is reached as
# eightbit_cpu::int8_linear_py for what the C++ kernel hands over.
@register("int8_linear", "cpu", available=native.available,
          qualname="eightbit_cpu::int8_linear_py" if torch_ext.int8_linear_loaded() else None)
def int8_linear_cpu(x, weight, weight_absmax, bias, threshold):
    """Kernel of ``int8_linear`` (LLM.int8() forward): one native call (``eb_int8_linear``: prepare, scales, exact
    GEMM with the outlier columns' float part and the bias in its epilogue, in the reference's order) into one
    scratch buffer. With more than ``SEQUENTIAL_OUTLIER_COLUMNS`` outlier columns the call stops before its GEMM;
    their product is computed here with the reference's BLAS expression and ``eb_int8_linear_finish`` adds it.
    Output cast to ``x.dtype``."""
    m, k = x.shape
    lib = native.library()
    # the absmax in float32 only: the reference computes in its dtype, which the native code does not
    if (m == 0 or k > _NATIVE_MAX_K or lib is None or not _threshold_fits(threshold)
            or weight_absmax.dtype != torch.float32):
        return NotImplemented
    n = weight.shape[0]
    # the native code reads these by pointer: a mismatch is an error here, not a read past the end
    if weight.shape[1] != k:
        raise ValueError(f"int8_linear: weight has {weight.shape[1]} input features, x has {k}")
    if weight_absmax.shape != (n,):
        raise ValueError(f"int8_linear: weight_absmax must have shape ({n},), got {tuple(weight_absmax.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"int8_linear: bias must have shape ({n},), got {tuple(bias.shape)}")
    xf = (x if x.dtype == torch.float32 else x.float()).contiguous()
    cap = min(k, SEQUENTIAL_OUTLIER_COLUMNS)
    offsets, total = _layout(m, k, n, cap)
    scratch = _scratch(total)
    base = scratch.data_ptr()
    q_p, xs_p, ws_p, fl_p, cols_p, xo_p, wo_p = (base + o for o in offsets)
    out = native.empty((m, n), dtype=torch.float32)
    w = weight.contiguous()
    wa = weight_absmax.contiguous()
    b = None if bias is None else (bias if bias.dtype == torch.float32 else bias.float()).contiguous()
    b_p = None if b is None else b.data_ptr()
    c = lib.eb_int8_linear(xf.data_ptr(), m, k, w.data_ptr(), wa.data_ptr(), b_p, n, float(threshold), cap, q_p,
                           xs_p, ws_p, fl_p, cols_p, xo_p, wo_p, out.data_ptr(), _flag_guess(w, k).data_ptr())
    if c < 0:
        return NotImplemented
    if c > cap:
        cols = scratch[offsets[4] : offsets[4] + 8 * c].view(torch.int64)
        outlier = outlier_product(xf.index_select(1, cols), dequantize_weight_columns(w, wa, cols))  # (M, N)
        lib.eb_int8_linear_finish(q_p, m, k, w.data_ptr(), wa.data_ptr(), xs_p, ws_p, outlier.data_ptr(), b_p, n,
                                  out.data_ptr())
    return out if x.dtype == torch.float32 else out.to(x.dtype)


if torch_ext.int8_linear_loaded():  # the C++ kernel's native functions and limits: the ones above, defined once
    torch_ext.bind_int8_linear(max_k=_NATIVE_MAX_K, outlier_cap=SEQUENTIAL_OUTLIER_COLUMNS,
                               scratch_keep=_SCRATCH_KEEP, guesses_kept=_GUESSES_KEPT)
