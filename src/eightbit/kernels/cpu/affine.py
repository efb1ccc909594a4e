"""Native CPU kernel of ``quantize_int8`` (csrc/affine_cpu.c): the affine int8 codes in one pass, bit-identical to
the reference's division, round, NaN-to-zero and clamp (five tensor passes and their temporaries there). Float32
inputs with one scale or one per leading index; other dtypes and layouts go to the reference."""
from __future__ import annotations

import torch

from ..registry import register
from . import native


@register("quantize_int8", "cpu", available=native.available)
def quantize_int8_cpu(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
                      symmetric: bool):
    """Kernel of ``quantize_int8``: int8 (symmetric) or uint8 codes of float32 ``x``."""
    if x.dtype != torch.float32 or x.numel() == 0 or (axis not in (None, 0) and scale.numel() != 1):
        return NotImplemented
    shape = (-1,) + (1,) * (x.dim() - 1)  # per-slice parameters broadcast along the leading axis
    params = [scale if scale.numel() == 1 else scale.reshape(shape),
              zero_point if zero_point.numel() == 1 else zero_point.reshape(shape)]
    out = native.rowwise(x.contiguous(), params, lambda lib, xs, ps, stride, rows, cols, o: lib.eb_quantize_int8(
        xs, ps[0], ps[1], stride, rows, cols, int(bool(symmetric)), o), torch.uint8)
    if out is None:
        return NotImplemented
    return out.view(torch.int8) if symmetric else out
