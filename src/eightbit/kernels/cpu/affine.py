"""Native CPU kernels of ``quantize_int8`` and ``finite_minmax`` (csrc/affine_cpu.c). ``quantize_int8``: the affine
int8 codes in one pass, bit-identical to the reference's division, round, NaN-to-zero and clamp (five tensor passes
and their temporaries there). ``finite_minmax``: min and max over the finite values in one pass (the reference
runs amin, amax and, when anything is non-finite, a masked copy), equal to it up to the sign of a zero result
(+0 and -0 compare equal). Float32 inputs, one scale or slice per leading index; other dtypes and layouts go to
the references."""
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


@register("finite_minmax", "cpu", available=native.available)
def finite_minmax_cpu(x: torch.Tensor, axis: int | None):
    """Kernel of ``finite_minmax`` for float32 ``x``, per tensor or per slice along axis 0."""
    lib = native.library()
    if lib is None or x.dtype != torch.float32 or x.numel() == 0 or axis not in (None, 0):
        return NotImplemented
    xc, p, n = x.contiguous(), native.ptr, x.numel()
    if axis == 0:
        rows = x.shape[0]
        lo, hi = torch.empty(rows), torch.empty(rows)
        lib.eb_finite_minmax(p(xc), rows, n // rows, 1, p(lo), p(hi))
        return lo, hi
    body, tail = divmod(n, native.ROW_UNIT)
    lo, hi = torch.empty(body + (tail > 0)), torch.empty(body + (tail > 0))
    if body:
        lib.eb_finite_minmax(p(xc), body, native.ROW_UNIT, 0, p(lo), p(hi))
    if tail:
        lib.eb_finite_minmax(p(xc) + 4 * body * native.ROW_UNIT, 1, tail, 0, p(lo) + 4 * body, p(hi) + 4 * body)
    lo, hi = lo.min(), hi.max()
    if bool(lo.isinf()):  # no finite value anywhere
        return torch.zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.float32)
    return lo, hi
