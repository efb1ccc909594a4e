"""Native CPU kernels of the block-wise ops (``quantize_blockwise``, ``dequantize_blockwise`` and their ``.out``
forms): ``eb_quantize_blocks`` / ``eb_dequantize_blocks`` in csrc/blockwise_cpu.c, bit-identical to the
reference ``eightbit.functional.blockwise.quantize_blocks`` (tests/kernels/test_native_cpu.py). Full blocks
run in one parallel call; a partial last block is its own call. Codes whose tables would need more than two
midpoint comparisons per cell (odd quantile maps) go to the reference."""
from __future__ import annotations

import ctypes

import torch

from ...functional.codes import codebook
from ..registry import register
from . import native
from .tables import Lut, native_tables




def quantize_into(x: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor, absmax: torch.Tensor,
                  seed: int = -1, first: int = 0, lut: Lut | None = None) -> bool:
    """Quantize CPU ``x`` block-wise into contiguous uint8 ``out`` and float32 ``absmax``; False (nothing
    written) when the native kernel does not apply. ``seed >= 0`` rounds stochastically, element i drawing with
    index ``first + i``. ``lut``: tables to use instead of the code's own (tests compare table variants)."""
    lib = native.library()
    tables = native_tables(codebook(code)) if lut is None else None
    if lib is None or (lut is None and tables is None) or blocksize > native.MAX_BLOCK:
        return False
    if not (out.is_contiguous() and absmax.is_contiguous()):
        return False
    lut = tables.lut if lut is None else lut
    xf = (x if x.dtype == torch.float32 else x.float()).contiguous()
    n = xf.numel()
    nfull = n // blocksize
    if nfull:
        lib.eb_quantize_blocks(xf.data_ptr(), nfull, blocksize, ctypes.byref(lut), seed, first, out.data_ptr(),
                               absmax.data_ptr())
    if n % blocksize:
        lo = nfull * blocksize
        lib.eb_quantize_blocks(xf.data_ptr() + 4 * lo, 1, n - lo, ctypes.byref(lut), seed, first + lo,
                               out.data_ptr() + lo, absmax.data_ptr() + 4 * nfull)
    return True


@register("quantize_blockwise", "cpu", available=native.available)
def quantize_blockwise_cpu(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Kernel of ``quantize_blockwise``: (uint8 codes of x's shape, float32 absmax per block)."""
    out = native.empty(x.shape, torch.uint8)
    absmax = torch.empty(-(-x.numel() // blocksize), dtype=torch.float32)
    if not quantize_into(x, code, blocksize, out, absmax):
        return NotImplemented
    return out, absmax


@register("quantize_blockwise.out", "cpu", available=native.available)
def quantize_blockwise_out_cpu(x, code, blocksize, *, out, absmax):
    """Kernel of ``quantize_blockwise.out`` (codes into ``out``, scales into ``absmax``)."""
    if not quantize_into(x, code, blocksize, out, absmax):
        return NotImplemented
    return None


def dequantize_into(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                    out: torch.Tensor) -> bool:
    """``code[q] * absmax`` per block into contiguous float32 ``out``; False when the kernel does not apply."""
    lib = native.library()
    if lib is None or out.dtype != torch.float32 or not out.is_contiguous() or blocksize > native.MAX_BLOCK:
        return False
    q, absmax, code = q.contiguous(), absmax.contiguous(), code.contiguous()
    n = q.numel()
    nfull = n // blocksize
    if nfull:
        lib.eb_dequantize_blocks(q.data_ptr(), absmax.data_ptr(), code.data_ptr(), nfull, blocksize, out.data_ptr())
    if n % blocksize:
        lo = nfull * blocksize
        lib.eb_dequantize_blocks(q.data_ptr() + lo, absmax.data_ptr() + 4 * nfull, code.data_ptr(), 1, n - lo,
                                 out.data_ptr() + 4 * lo)
    return True


@register("dequantize_blockwise", "cpu", available=native.available)
def dequantize_blockwise_cpu(q, absmax, code, blocksize, dtype):
    """Kernel of ``dequantize_blockwise``: values in ``dtype`` (computed in float32, then cast)."""
    out = native.empty(q.shape, torch.float32)
    if not dequantize_into(q, absmax, code, blocksize, out):
        return NotImplemented
    return out if dtype == torch.float32 else out.to(dtype)


@register("dequantize_blockwise.out", "cpu", available=native.available)
def dequantize_blockwise_out_cpu(q, absmax, code, blocksize, dtype, *, out):
    """Kernel of ``dequantize_blockwise.out``."""
    if out.dtype == torch.float32:
        return None if dequantize_into(q, absmax, code, blocksize, out) else NotImplemented
    tmp = torch.empty(q.shape, dtype=torch.float32)
    if not dequantize_into(q, absmax, code, blocksize, tmp):
        return NotImplemented
    out.copy_(tmp)
    return None
