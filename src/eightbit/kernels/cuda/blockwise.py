"""Triton kernels of block-wise quantization (``quantize_blockwise``, ``dequantize_blockwise`` and their
``.out`` forms) and the block quantizer the optimizer kernel shares (:func:`quantize_block`).

Bit-identical to the reference ``eightbit.functional.blockwise.quantize_blocks``: absmax per block (a block
holding NaN/Inf gets absmax NaN and every code ``zero_index``), ``x / absmax`` correctly rounded, the nearest
code as the number of midpoints below (ties to the lower code) found by an 8-step binary search over the 255
midpoints padded with +inf, and stochastic rounding with the reference's counter-based draw (the same integer
arithmetic, so codes agree across devices for the same seed). One program quantizes one block.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...functional.codes import Codebook, codebook
from ._common import LAUNCH, arg, device_guarded, kind_of, load_f32, store_f32, warps_for_block

MAX_BLOCK = 16384  # every block size the ops accept (one block per program)


def padded_midpoints(cb: Codebook) -> torch.Tensor:
    """The codebook's 255 midpoints and a trailing +inf (256 float32): the binary search's table."""
    def build(c: Codebook) -> torch.Tensor:
        return torch.cat([c.midpoints.float(), c.midpoints.new_full((1,), float("inf"))]).contiguous()
    return cb.table("triton_midpoints", build)


@triton.jit
def quantize_block(x, mask, code_ptr, mid_ptr, zero_index, seed, index, STOCHASTIC: tl.constexpr,
                   POW2: tl.constexpr = False, FLOOR: tl.constexpr = False):
    """uint8 codes and the absmax of one block of float32 values ``x`` (lanes outside ``mask`` ignored);
    ``index``: each lane's element index in the whole tensor (int64), the draw's counter when STOCHASTIC;
    POW2: the block scale is the power of two above the absmax (binary dynamic maps, ``pow2_above``); FLOOR: a
    positive value never takes the zero code (``quantize_blocks``' floor)."""
    x = tl.where(mask, x, 0.0)
    nan = tl.max((x != x).to(tl.int32), axis=0)  # tl.max drops NaN: flag it apart
    amax = tl.max(tl.abs(x), axis=0)
    ok = (nan == 0) & (amax < float("inf"))
    if POW2:
        e = tl.minimum((amax.to(tl.int32, bitcast=True) >> 23) + 1, 254)
        amax = tl.where(amax > 0, (e << 23).to(tl.float32, bitcast=True), amax)
    scale = tl.where(ok & (amax > 0), amax, 1.0)
    n = tl.div_rn(x, scale)
    idx = tl.zeros(x.shape, dtype=tl.int32)
    for i in tl.static_range(8):  # count the midpoints below n: steps 128, 64, ..., 1
        step = 128 >> i
        idx = tl.where(tl.load(mid_ptr + idx + (step - 1)) < n, idx + step, idx)
    if STOCHASTIC:
        # the reference's draw in int64: ((index mod 2^31) * 0x9E3779B9 + 2 seed) mod 2^32, top 24 bits
        h = (((index & 0x7FFFFFFF) * 2654435769 + seed) + seed) & 0xFFFFFFFF  # int64 throughout
        u = (h >> 8).to(tl.float32) * (1.0 / 16777216.0)
        lo = idx - (tl.load(code_ptr + idx) > n).to(tl.int32)
        lo = tl.minimum(tl.maximum(lo, 0), 254)
        c_lo = tl.load(code_ptr + lo)
        c_hi = tl.load(code_ptr + lo + 1)
        idx = lo + (u < tl.div_rn(n - c_lo, c_hi - c_lo)).to(tl.int32)
    if FLOOR:
        idx = tl.where((n > 0) & (idx == zero_index), idx + 1, idx)
    q = tl.where(ok, idx, zero_index)
    return q.to(tl.uint8), tl.where(ok, amax, float("nan"))


@triton.jit
def quantize_kernel(x_ptr, code_ptr, mid_ptr, q_ptr, absmax_ptr, start, width, block0, zero_index, seed, first,
                    KIND: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr, POW2: tl.constexpr):
    b = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    mask = lane < width
    offs = start + b.to(tl.int64) * width + lane
    x = load_f32(x_ptr, offs, mask, KIND)
    q, amax = quantize_block(x, mask, code_ptr, mid_ptr, zero_index, seed, first + offs, STOCHASTIC, POW2)
    tl.store(q_ptr + offs, q, mask=mask)
    tl.store(absmax_ptr + block0 + b, amax)


@triton.jit
def dequantize_kernel(q_ptr, absmax_ptr, code_ptr, out_ptr, n, blocksize, KIND: tl.constexpr,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    a = tl.load(absmax_ptr + offs // blocksize, mask=mask, other=0.0)
    store_f32(out_ptr, offs, tl.load(code_ptr + q) * a, mask, KIND)


# ---------------------------------------------------------------- launchers
def full_and_partial(n: int, blocksize: int):
    """(start, nblocks, width, first block) of the full blocks and of the partial last one."""
    nfull = n // blocksize
    if nfull:
        yield 0, nfull, blocksize, 0
    if n % blocksize:
        yield nfull * blocksize, 1, n - nfull * blocksize, nfull


@device_guarded
def quantize_into(x: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor, absmax: torch.Tensor,
                  seed: int = -1, first: int = 0) -> None:
    """Kernel of ``quantize_blockwise.out``: codes of contiguous ``x`` into ``out``, scales into ``absmax``.
    ``seed >= 0`` rounds stochastically, element i drawing with index ``first + i`` (as the reference)."""
    cb = codebook(code)
    mids = padded_midpoints(cb)
    x = x.contiguous()
    for start, nblocks, width, b0 in full_and_partial(x.numel(), blocksize):
        block = triton.next_power_of_2(width)
        quantize_kernel[(nblocks,)](arg(x), cb.values, mids, out, absmax, start, width, b0, cb.zero_index,
                                    max(seed, 0), first, KIND=kind_of(x.dtype), STOCHASTIC=seed >= 0, POW2=cb.pow2_scale,
                                    BLOCK=block, num_warps=warps_for_block(block), **LAUNCH)


@device_guarded
def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Kernel of ``quantize_blockwise``: (uint8 codes of x's shape, float32 absmax per block)."""
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    absmax = torch.empty(-(-x.numel() // blocksize), dtype=torch.float32, device=x.device)
    quantize_into(x, code, blocksize, out, absmax)
    return out, absmax


@device_guarded
def dequantize_into(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor):
    """Kernel of ``dequantize_blockwise.out``: ``code[q] * absmax`` per block into ``out`` (its dtype)."""
    n = q.numel()
    if n:
        bl = 1024
        dequantize_kernel[(triton.cdiv(n, bl),)](q.contiguous(), absmax.contiguous(), code.contiguous(), arg(out),
                                                 n, blocksize, KIND=kind_of(out.dtype), BLOCK=bl, **LAUNCH)


@device_guarded
def dequantize_blockwise(q, absmax, code, blocksize, dtype):
    """Kernel of ``dequantize_blockwise``: values of q's shape in ``dtype``."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    dequantize_into(q, absmax, code, blocksize, out)
    return out
