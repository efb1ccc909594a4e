"""Case "blockwise": block-wise 8-bit quantize + dequantize (dynamic code, blocksize 2048) of 64M fp32 values.

Throughput is GB/s of fp32 input through the round trip. Accuracy: relative error of the round trip.
The target rows allocate fresh outputs on every call (as a plain call does); the "out= reused" rows pass
preallocated output buffers (both libraries take ``out=``), which removes the page faults of fresh memory.
Floor: 10 bytes/value (read 4 + write 1, then read 1 + write 4) at the measured bandwidth.
"""
from __future__ import annotations

import torch

from .common import Built, Context, Impl, Row, Unavailable, measure, rel_error

BLOCKSIZE = 2048


def numel(quick: bool) -> int:
    return (4 if quick else 64) * 2**20


def _round_trip(quantize, dequantize, x: torch.Tensor, reuse: bool) -> Built:
    """Quantize + dequantize with one library's functions (same keywords in both), optionally into reused buffers."""
    q_buf = torch.empty(x.shape, dtype=torch.uint8) if reuse else None
    out_buf = torch.empty_like(x) if reuse else None

    def fn():
        q, state = quantize(x, blocksize=BLOCKSIZE, out=q_buf)
        return dequantize(q, state, out=out_buf)

    return Built(fn, rel_error=rel_error(fn(), x))


def _eightbit(x: torch.Tensor, reuse: bool = False) -> Built:
    from eightbit.functional import dequantize_blockwise, quantize_blockwise

    return _round_trip(quantize_blockwise, dequantize_blockwise, x, reuse)


def _bitsandbytes(x: torch.Tensor, reuse: bool = False) -> Built:
    try:
        import bitsandbytes.functional as F
    except ImportError as e:
        raise Unavailable("bitsandbytes not installed") from e
    return _round_trip(F.quantize_blockwise, F.dequantize_blockwise, x, reuse)


def run(ctx: Context) -> list[Row]:
    """All configurations of the case, as result rows."""
    n = numel(ctx.quick)
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    impls = [Impl("eightbit quantize_blockwise", lambda: _eightbit(x)),
             Impl("bitsandbytes quantize_blockwise", lambda: _bitsandbytes(x)),
             Impl("eightbit quantize_blockwise, out= reused", lambda: _eightbit(x, reuse=True)),
             Impl("bitsandbytes quantize_blockwise, out= reused", lambda: _bitsandbytes(x, reuse=True))]
    floor = 10 * n / (ctx.bandwidth_gbps * 1e9) if ctx.bandwidth_gbps else None
    return measure(ctx, "blockwise", f"{n // 2**20}M fp32, blocksize {BLOCKSIZE}", impls,
                   bytes_per_call=4 * n, floor_s=floor)
