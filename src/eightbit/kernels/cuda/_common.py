"""Shared pieces of the Triton kernels: dtype kinds, float conversions that round exactly as torch on every
Triton backend (the GPU compiler and the CPU interpreter), and the launch options.

Why hand-written conversions: Triton's interpreter truncates float32 -> bfloat16 and flushes bfloat16
subnormals on load, while the compiled kernel rounds to nearest even; bfloat16 therefore crosses the kernel
boundary as its int16 bit pattern and is converted with integer arithmetic (identical everywhere). Why
``enable_fp_fusion=False``: a contracted ``a * b + c`` rounds once where the reference rounds twice, and the
8-bit states must be bit-identical to the reference's.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

KIND_F32, KIND_F16, KIND_BF16, KIND_F64 = 0, 1, 2, 3
_KINDS = {torch.float32: KIND_F32, torch.float16: KIND_F16, torch.bfloat16: KIND_BF16, torch.float64: KIND_F64}

# Every launch: no FMA contraction (the reference rounds each product), correctly rounded division and sqrt
# are spelled out in the kernels (tl.div_rn, tl.sqrt_rn).
LAUNCH = {"enable_fp_fusion": False}


def on_device(t: torch.Tensor):
    """Context in which a launch for ``t`` goes to ``t``'s GPU: Triton launches on the *current* CUDA device and
    stream, and an op kernel gets no device guard (inputs on cuda:1 with cuda:0 current would fail)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def device_guarded(fn):
    """Decorator: run launcher ``fn`` with its first tensor argument's GPU as the current device (see
    :func:`on_device`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with on_device(t) if t is not None else contextlib.nullcontext():
            return fn(*args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(t: torch.Tensor) -> tuple[int, int] | None:
    """Compute capability of ``t``'s GPU (asked once per device), None for a tensor not on CUDA."""
    if not t.is_cuda:
        return None
    return _capability(t.device.index if t.device.index is not None else torch.cuda.current_device())


def warps_for_block(block: int) -> int:
    """num_warps for a one-block-per-program kernel of ``block`` lanes: few registers per thread, no spills up
    to the largest block (16384), measured with ptxas -v for the compiled configurations."""
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


def kind_of(dtype: torch.dtype) -> int:
    """The kernels' code for a float dtype (ValueError for any other)."""
    try:
        return _KINDS[dtype]
    except KeyError:
        raise ValueError(f"no Triton kernel for dtype {dtype}") from None


def arg(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernels take it: bfloat16 as its int16 bits (see the module docstring), others unchanged."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


@triton.jit
def load_f32(ptr, offs, mask, KIND: tl.constexpr):
    """float32 values of a float tensor of kind KIND (bfloat16 given as int16 bits; float64 rounded)."""
    if KIND == 2:
        bits = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16, bitcast=True).to(tl.uint32)
        return (bits << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0).to(tl.float32)


@triton.jit
def store_f32(ptr, offs, x, mask, KIND: tl.constexpr):
    """Store float32 ``x`` into a tensor of kind KIND, rounding to nearest even (bfloat16 as int16 bits)."""
    if KIND == 2:
        b = x.to(tl.uint32, bitcast=True)
        b = tl.where(x != x, b | 0x400000, b + (((b >> 16) & 1) + 0x7FFF))  # NaN stays NaN (quiet)
        tl.store(ptr + offs, (b >> 16).to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    elif KIND == 1:
        tl.store(ptr + offs, x.to(tl.float16), mask=mask)
    elif KIND == 3:
        tl.store(ptr + offs, x.to(tl.float64), mask=mask)
    else:
        tl.store(ptr + offs, x, mask=mask)


@triton.jit
def round_half_even(v):
    """Round float32 ``v`` (|v| < 2**22) to the nearest integer, ties to even, as torch.round: adding and
    subtracting 1.5 * 2**23 leaves the integer part in the significand (no libdevice, same on every backend)."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def round_half_even_f64(v):
    """float64 form of :func:`round_half_even` (|v| < 2**51)."""
    return (v + 6755399441055744.0) - 6755399441055744.0
