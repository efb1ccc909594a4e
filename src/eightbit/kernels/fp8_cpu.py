"""Fast CPU fp8 casts: fp32 -> fp8 bit patterns by integer bit manipulation (round to nearest even),
fp8 -> fp32 by a 256-entry lookup table, each fused with the scale by ``torch.compile``.

Registered ops (the functional code in ``eightbit.functional.fp8`` passes plain numbers, no format objects,
since kernels must not import ``functional``):

* ``"quantize_fp8"``: ``fn(x, scale, *, man_bits, bias, max_code, nan_code, overflow_code, saturate, fnuz)``
  -> uint8 codes of ``x / scale`` (``x`` any float dtype, ``scale`` an fp32 tensor broadcastable to ``x``),
  or None when this kernel cannot run (tiny input, compiler missing): the caller then runs its reference.
* ``"dequantize_fp8"``: ``fn(codes_uint8, scale, *, fp8_dtype, out_dtype)`` -> ``table[codes] * scale`` or None.

Why compiled: the cast is memory bound; eager PyTorch would make ~15 full passes over the data, the
compiled kernel makes one (read fp32 once, write one byte). Compiled once per process on first use
(a few seconds; inductor's on-disk cache makes later processes faster).
"""
from __future__ import annotations

import struct
import threading
from typing import Callable

import warnings

import torch

from . import native_cpu
from .dispatch import register_kernel

# Below this many elements the reference (PyTorch's own cast) is cheaper than a compiled call.
MIN_NUMEL = 1 << 14

_lock = threading.Lock()
_compiled: dict[str, Callable] = {}
_broken = False  # set when torch.compile is unusable here (no C++ compiler): references run instead


def _bits_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def fp32_to_fp8_bits(
    y: torch.Tensor,
    magic: float,
    man_bits: int,
    bias: int,
    max_code: int,
    nan_code: int,
    overflow_code: int,
    saturate: bool,
    fnuz: bool,
) -> torch.Tensor:
    """uint8 fp8 codes of the fp32 tensor ``y`` with round-to-nearest-even (plain torch integer ops).

    Normal results: re-bias the exponent in the fp32 bit pattern and round the mantissa with the
    classic ``+ (half - 1) + lsb`` trick. Subnormal results: add a power of two whose ulp equals the
    fp8 subnormal step, so the FPU's own round-to-nearest-even does the rounding (``magic`` is that
    power of two)."""
    b = y.view(torch.int32)
    sign = (b >> 24) & 0x80
    a = b & 0x7FFFFFFF  # |y| bits
    shift = 23 - man_bits
    n = a - ((127 - bias) << 23)
    n = (n + ((1 << (shift - 1)) - 1) + ((n >> shift) & 1)) >> shift
    magic_bits = (127 + 24 - bias - man_bits) << 23
    sub = (a.view(torch.float32) + magic).view(torch.int32) - magic_bits
    u = torch.where(a < ((128 - bias) << 23), sub, n)
    u = torch.where(u > max_code, max_code if saturate else overflow_code, u)  # also catches +-inf
    u = torch.where(a > 0x7F800000, nan_code, u)
    r = u | sign
    if fnuz:  # no negative zero; the single NaN 0x80 already carries the sign bit
        r = torch.where(u == 0, 0, r)
    return r.to(torch.uint8)


def _quantize_graph(x: torch.Tensor, scale: torch.Tensor, magic: float, *params) -> torch.Tensor:
    return fp32_to_fp8_bits(x.to(torch.float32) / scale, magic, *params)


def _dequantize_graph(codes: torch.Tensor, table: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return (table[codes.to(torch.int64)] * scale).to(out_dtype)


def _run(name: str, fn: Callable, *args) -> torch.Tensor | None:
    """Call the compiled ``fn`` (compiled once; integer format parameters become dynamic after the first
    recompile, so all formats share a few graphs). None when compiling is impossible here."""
    global _broken
    if _broken:
        return None
    with _lock:
        c = _compiled.get(name)
        if c is None:
            c = _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    try:
        return c(*args)
    except Exception as e:
        if "recompile" in type(e).__name__.lower() or "recompile" in str(e).lower():
            # Too many shape/dtype variants for dynamo's per-function limit: the same code runs eagerly.
            return fn(*args)
        # compiler toolchain missing or broken: the reference runs from now on
        warnings.warn(f"eightbit: compiled fp8 kernel unavailable ({type(e).__name__}: {e}); using the reference", RuntimeWarning, stacklevel=3)
        _broken = True
        return None


_UNIT = 1 << 16  # elements per work unit when one scale covers everything


def _native(x: torch.Tensor, scale: torch.Tensor, call: Callable, out_dtype: torch.dtype) -> torch.Tensor | None:
    """Run a native row-wise cast ``call(lib, x_ptr, scale_ptr, scale_stride, rows, cols, out_ptr)`` over a
    contiguous ``x`` whose ``scale`` is one value or one per leading index; None when that does not fit."""
    lib = native_cpu.library()
    if lib is None or not x.is_contiguous() or x.dim() == 0 or x.device.type != "cpu":
        return None
    scale = scale.to(torch.float32)
    n = x.numel()
    out = native_cpu.empty(x.shape, dtype=out_dtype)
    ptr, xi, oi = native_cpu.ptr, x.element_size(), out.element_size()
    if scale.numel() == 1:  # one scale: cut the data into rows of _UNIT so the kernel can parallelize
        s = scale.reshape(1).contiguous()
        body = n // _UNIT
        if body:
            call(lib, ptr(x), ptr(s), 0, body, _UNIT, ptr(out))
        if n % _UNIT:
            call(lib, ptr(x) + body * _UNIT * xi, ptr(s), 0, 1, n % _UNIT, ptr(out) + body * _UNIT * oi)
        return out
    rows = x.shape[0]
    if scale.shape[:1] != (rows,) or scale.numel() != rows or scale.dim() != x.dim():
        return None
    call(lib, ptr(x), ptr(scale.reshape(rows).contiguous()), 1, rows, n // max(rows, 1), ptr(out))
    return out


_tables: dict[torch.dtype, torch.Tensor] = {}


def decode_table(fp8_dtype: torch.dtype) -> torch.Tensor:
    """fp32 value of each of the 256 codes of ``fp8_dtype`` (from PyTorch's own cast, so exact)."""
    t = _tables.get(fp8_dtype)
    if t is None:
        t = torch.arange(256, dtype=torch.uint8).view(fp8_dtype).to(torch.float32)
        _tables[fp8_dtype] = t
    return t


@register_kernel("quantize_fp8", "cpu")
def quantize_fp8_cpu(
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    man_bits: int,
    bias: int,
    max_code: int,
    nan_code: int,
    overflow_code: int,
    saturate: bool,
    fnuz: bool,
    force: bool = False,
) -> torch.Tensor | None:
    """uint8 codes of ``x / scale`` (same shape as ``x``), or None to ask for the reference.

    ``force=True`` runs the compiled kernel even on tiny inputs (tests)."""
    if x.numel() < MIN_NUMEL and not force:
        return None
    magic = _bits_to_float((127 + 24 - bias - man_bits) << 23)
    if x.dtype == torch.float32:
        out = _native(x, scale, lambda lib, xs, ss, stride, rows, cols, o: lib.eb_fp32_to_fp8(
            xs, ss, stride, rows, cols, magic, man_bits, bias, max_code, nan_code, overflow_code,
            int(bool(saturate)), int(bool(fnuz)), o), torch.uint8)
        if out is not None:
            return out
    return _run(
        "q", _quantize_graph, x, scale.to(torch.float32), magic,
        man_bits, bias, max_code, nan_code, overflow_code, bool(saturate), bool(fnuz),
    )


@register_kernel("dequantize_fp8", "cpu")
def dequantize_fp8_cpu(
    codes: torch.Tensor, scale: torch.Tensor, *, fp8_dtype: torch.dtype, out_dtype: torch.dtype, force: bool = False
) -> torch.Tensor | None:
    """``table[codes] * scale`` in ``out_dtype`` (codes uint8), or None to ask for the reference."""
    if codes.numel() < MIN_NUMEL and not force:
        return None
    table = decode_table(fp8_dtype)
    out = _native(codes, scale, lambda lib, cs, ss, stride, rows, cols, o: lib.eb_fp8_to_fp32(
        cs, native_cpu.ptr(table), ss, stride, rows, cols, o), torch.float32)
    if out is not None:
        return out.to(out_dtype)
    return _run("dq", _dequantize_graph, codes, table, scale.to(torch.float32), out_dtype)


@register_kernel("absmax", "cpu")
def absmax_cpu(x: torch.Tensor) -> torch.Tensor | None:
    """max |x| of a contiguous float32 CPU tensor as a 0-dim float32 tensor, in one native pass without an
    |x|-sized temporary (``x.abs().amax()`` allocates one: ~100 ms of page faults for 256 MB on this
    project's VM); None when it does not apply (other dtypes or layouts, no native library, or a NaN/Inf in
    ``x``: the caller's finite-only path decides then)."""
    lib = native_cpu.library()
    if lib is None or x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu" or x.numel() == 0:
        return None
    bits = int(lib.eb_absmax_bits(native_cpu.ptr(x), x.numel()))
    if bits >= 0x7F800000:
        return None
    return torch.tensor(_bits_to_float(bits), dtype=torch.float32)
