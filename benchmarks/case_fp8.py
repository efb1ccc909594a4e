"""Case "fp8": per-tensor fp8 E4M3 quantize + dequantize of 64M fp32 values (scale = absmax / 448).

PyTorch's own path computes the same absmax scale and casts ``(x / s).to(float8_e4m3fn).to(float32) * s``.
Throughput is GB/s of fp32 input; accuracy the round trip's relative error.
Floor: 14 bytes/value (absmax pass reads 4; quantize reads 4, writes 1; dequantize reads 1, writes 4).
"""
from __future__ import annotations

import torch

from .common import Built, Context, Impl, Row, measure, rel_error

E4M3_MAX = 448.0


def numel(quick: bool) -> int:
    return (4 if quick else 64) * 2**20


def _eightbit(x: torch.Tensor) -> Built:
    from eightbit.functional import dequantize_fp8, quantize_fp8

    def fn():
        q, scale = quantize_fp8(x, format="e4m3")
        return dequantize_fp8(q, scale, format="e4m3")

    return Built(fn, rel_error=rel_error(fn(), x))


def _torch_cast(x: torch.Tensor) -> Built:
    if not hasattr(torch, "float8_e4m3fn"):
        raise NotImplementedError("this torch has no float8_e4m3fn")

    def fn():
        scale = x.abs().amax() / E4M3_MAX
        return (x / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale

    return Built(fn, rel_error=rel_error(fn(), x))


def run(ctx: Context) -> list[Row]:
    """All configurations of the case, as result rows."""
    n = numel(ctx.quick)
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    impls = [Impl("eightbit quantize_fp8", lambda: _eightbit(x)),
             Impl("torch float8_e4m3fn cast", lambda: _torch_cast(x))]
    floor = 14 * n / (ctx.bandwidth_gbps * 1e9) if ctx.bandwidth_gbps else None
    return measure(ctx, "fp8", f"{n // 2**20}M fp32, e4m3", impls, bytes_per_call=4 * n, floor_s=floor)
