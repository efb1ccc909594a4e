"""Affine INT8 quantization for static post-training quantization, and the scale helpers shared with fp8.

Symmetric: ``q = clamp(round(x / scale), -127, 127)`` as int8, zero point 0 (the -128 code is unused so
the grid is symmetric). Asymmetric: ``q = clamp(round(x / scale) + zero_point, 0, 255)`` as uint8 with an
integer zero point in [0, 255] (the range always contains 0, so 0.0 is exact). Rounding is half to even.

Scales are per tensor (a 0-dim fp32 tensor) or per slice along ``axis`` (shape ``(x.shape[axis],)``).
Computed scales use the finite values only; an all-zero slice gets scale 1. NaN inputs quantize to the
zero point (i.e. dequantize to 0.0) and +-Inf saturate to the extreme codes: documented, tested, never
spread to the other elements.

Huge inputs: a computed scale is capped so that dequantizing any code stays finite in float32. Symmetric:
``127 * scale`` <= float32 max (for +-float32 max the cap is a few ulps below ``max / 127``; the codes are
unchanged, +-max still gets +-127). Asymmetric: the range is formed as ``hi/2 - lo/2`` so ``hi - lo`` beyond
float32 max works; when it exceeds float32 max the scale is capped at ~``max / 128`` and the zero point kept
where ``(q - zero_point) * scale`` is finite for all 256 codes, so the extreme inputs may then be off by up
to one step (``scale``) instead of half a step.
Empty tensors work with and without ``axis`` (per-slice scales then have ``x.shape[axis]`` entries).
Meta tensors work too (no data-dependent checks run on them): the results are meta tensors of the
right shapes and dtypes, so quantized layers can be built on the meta device.
"""
from __future__ import annotations

import math
import struct

import torch

from .._checks import check_bool, check_tensor, values_checkable
from . import ops

_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TINY = torch.finfo(torch.float32).tiny
_FMAX = torch.finfo(torch.float32).max


def check_axis(axis: int, x: torch.Tensor) -> int:
    """Normalise ``axis`` for ``x`` (TypeError/ValueError when it is not a valid dim)."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int or None, got {type(axis).__name__}")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be in [{-x.dim()}, {x.dim() - 1}] for a tensor of shape {tuple(x.shape)}, got {axis}")
    return axis % x.dim()


def _rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as (1, N) per tensor or (C, N) per slice along ``axis``."""
    if axis is None:
        return x.reshape(1, -1)
    # explicit row length: reshape(0, -1) is ambiguous and raises on empty tensors
    n = math.prod(d for i, d in enumerate(x.shape) if i != axis)
    return x.movedim(axis, 0).reshape(x.shape[axis], n)


@ops.reference("finite_minmax")
def finite_minmax_reference(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of the ``finite_minmax`` op (see :func:`finite_minmax`)."""
    r = _rows(x, axis)
    if r.shape[1] == 0:
        z = torch.zeros(r.shape[0], dtype=torch.float32, device=x.device)
        lo, hi = z, z.clone()
    else:
        lo, hi = r.amin(1), r.amax(1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            finite = torch.isfinite(r)
            lo = torch.where(finite, r, torch.inf).amin(1)
            hi = torch.where(finite, r, -torch.inf).amax(1)
            lo = torch.where(torch.isfinite(lo), lo, 0.0)
            hi = torch.where(torch.isfinite(hi), hi, 0.0)
        lo, hi = lo.float(), hi.float()
    return (lo[0], hi[0]) if axis is None else (lo, hi)


@ops.reference("finite_amax")
def finite_amax_reference(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reference of the ``finite_amax`` op (see :func:`finite_amax`)."""
    r = _rows(x, axis)
    if r.shape[1] == 0:
        m = torch.zeros(r.shape[0], dtype=torch.float32, device=x.device)
    else:
        # max |x| without an |x|-sized temporary (a 256 MB one cost 100 ms of page faults); amax and amin
        # separately: torch.aminmax(dim=1) ran 10x slower than both here
        m = torch.maximum(r.amax(1), -r.amin(1))
        if not torch.isfinite(m).all():
            a = r.abs()
            m = torch.where(torch.isfinite(a), a, 0.0).amax(1)
        m = m.float()
    return m[0] if axis is None else m


def finite_minmax(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) over the finite values of ``x``, fp32, 0-dim or (C,); empty/all non-finite slices give 0."""
    return ops.finite_minmax(x.contiguous(), axis)


def finite_amax(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """max |x| over the finite values, fp32, 0-dim or (C,); empty/all non-finite slices give 0."""
    return ops.finite_amax(x.contiguous(), axis)


_F32_OVERFLOW = 2.0**128 - 2.0**103  # smallest real that rounds to inf in float32 (the tie rounds to even: inf)


def max_scale(qmax: float) -> float:
    """Largest float32 scale ``s`` with ``qmax * s`` finite in float32 (so dequantizing the extreme code
    of a computed scale never overflows to inf). Plain Python arithmetic (no tensors), so that it is a constant
    under ``torch.compile``: ``s * qmax`` is exact in float64 for float32 ``s`` and the small ``qmax`` used here."""
    s = struct.unpack("<f", struct.pack("<f", _FMAX / qmax))[0]
    while s * qmax >= _F32_OVERFLOW:
        s = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", s))[0] - 1))[0]
    return s


def _scale_cap(qmax: float) -> float | torch.Tensor:
    """``max_scale(qmax)``; while torch.compile traces, the same value as a 0-dim float32 tensor computed in the
    graph. Why: under dynamic shapes dynamo makes floats read from globals and dataclasses (``_FMAX``, a format's
    ``max``) symbolic, and ``struct`` cannot fold a symbolic float (dynamo recursed until RecursionError)."""
    if not torch.compiler.is_compiling():
        return max_scale(qmax)
    s = (torch.full((), _FMAX, dtype=torch.float64) / qmax).float()  # FMAX / qmax to nearest, as max_scale
    # one step down when qmax * s still rounds to inf (s * qmax is exact in float64, as in max_scale)
    return torch.where(s.double() * qmax >= _F32_OVERFLOW, torch.nextafter(s, torch.zeros_like(s)), s)


def scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """``amax / qmax`` with the zero-range guard (scale 1), no underflow to 0, and capped at
    ``max_scale(qmax)`` so ``qmax * scale`` stays finite."""
    amax = amax.float()
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).clamp_min(_TINY).clamp_max(_scale_cap(qmax))


def absmax_scale(x: torch.Tensor, qmax: float, axis: int | None = None) -> torch.Tensor:
    """Symmetric scale ``max|x| / qmax`` from finite values; 0-dim or (x.shape[axis],) fp32."""
    return scale_from_amax(finite_amax(x, axis), qmax)


def check_scale(scale: torch.Tensor | float, x: torch.Tensor, axis: int | None, name: str = "scale") -> torch.Tensor:
    """Validate a user scale: positive finite, 0-dim (or 1 element) per tensor, or ``(x.shape[axis],)``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(scale).__name__}")
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device) if not isinstance(scale, torch.Tensor) else scale
    if not s.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {s.dtype}")
    s = s.to(torch.float32)
    if s.numel() == 1:
        s = s.reshape(())
    elif axis is None or s.shape != (x.shape[axis],):
        want = "one element" if axis is None else f"one element or shape ({x.shape[axis]},)"
        raise ValueError(f"{name} must have {want}, got shape {tuple(s.shape)}")
    if values_checkable(s) and not bool(((s > 0) & torch.isfinite(s)).all()):
        raise ValueError(f"{name} must be positive and finite")
    return s


def broadcast_scale(s: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``s`` reshaped to broadcast against ``x`` (per-slice scales move to ``axis``)."""
    if axis is None or s.dim() == 0:
        return s
    shape = [1] * x.dim()
    shape[axis] = -1
    return s.reshape(shape)


def quantize_int8(
    x: torch.Tensor,
    scale: torch.Tensor | float | None = None,
    zero_point: torch.Tensor | int | None = None,
    axis: int | None = None,
    symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine INT8 quantization; returns ``(q, scale, zero_point)``.

    ``symmetric=True``: int8 codes in [-127, 127], ``zero_point`` all zeros (a given nonzero one is a
    ValueError). ``symmetric=False``: uint8 codes with ``zero_point`` in [0, 255]; with a given ``scale``
    the ``zero_point`` is required. ``scale``/``zero_point`` are 0-dim, or ``(x.shape[axis],)`` with ``axis``
    (``zero_point`` int32). Raises TypeError/ValueError on bad arguments (``symmetric`` must be a bool).
    Meta ``x`` gives meta results of the right shapes and dtypes.
    """
    check_tensor(x, "x", dtypes=_IN_DTYPES)
    check_bool(symmetric, "symmetric")
    if axis is not None:
        axis = check_axis(axis, x)
    if scale is None:
        if symmetric:
            scale = absmax_scale(x, 127.0, axis)
        else:
            lo, hi = finite_minmax(x, axis)
            scale, zero_point = affine_params(lo, hi)
    else:
        scale = check_scale(scale, x, axis)
    if symmetric:
        zp = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
        if zero_point is not None and values_checkable(zero_point) and bool((torch.as_tensor(zero_point) != 0).any()):
            raise ValueError("zero_point must be 0 (or None) when symmetric=True")
    else:
        if zero_point is None:
            raise ValueError("zero_point is required with a given scale when symmetric=False")
        zp = _check_zero_point(zero_point, scale)
    return ops.quantize_int8(x.contiguous(), scale, zp, axis, symmetric), scale, zp


@ops.reference("quantize_int8")
def quantize_int8_reference(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
                            symmetric: bool) -> torch.Tensor:
    """Reference of the ``quantize_int8`` op: the codes of :func:`quantize_int8` for a checked float32 ``scale``
    and int32 ``zero_point`` (0-dim, or ``(x.shape[axis],)`` with a non-negative ``axis``)."""
    s = broadcast_scale(scale, x, axis)
    y = torch.nan_to_num(torch.round(x.to(torch.float32) / s), nan=0.0)
    if symmetric:
        return y.clamp_(-127, 127).to(torch.int8)
    return (y + broadcast_scale(zero_point, x, axis)).clamp_(0, 255).to(torch.uint8)


def affine_params(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric uint8 (scale, zero_point) covering [lo, hi] widened to contain 0."""
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    # (hi/2 - lo/2) / 127.5 == (hi - lo) / 255 exactly, but cannot overflow when hi - lo > float32 max
    scale = scale_from_amax(hi * 0.5 - lo * 0.5, 127.5).clamp_max(_scale_cap(128.0))
    zp = torch.round(-lo / scale)
    # A range wider than float32 max (scale > max/255): keep (q - zp) * scale finite for every code q in
    # [0, 255] by keeping zp within [255 - m, m], m = the largest |q - zp| whose product is finite (>= 128).
    m = torch.floor(_FMAX / scale).clamp_max(255.0)
    m = torch.where(torch.isinf(m * scale), m - 1, m)
    zp = torch.maximum(torch.minimum(zp, m), 255.0 - m).clamp(0, 255).to(torch.int32)
    return scale, zp


def _check_zero_point(zero_point: torch.Tensor | int, scale: torch.Tensor) -> torch.Tensor:
    zp = torch.as_tensor(zero_point, device=scale.device)
    if zp.is_floating_point() or zp.dtype == torch.bool:
        raise TypeError(f"zero_point must be an integer tensor or int, got {zp.dtype}")
    zp = zp.to(torch.int32)
    if zp.numel() == 1:
        zp = zp.reshape(()).expand(scale.shape).contiguous()
    if zp.shape != scale.shape:
        raise ValueError(f"zero_point shape {tuple(zp.shape)} does not match scale shape {tuple(scale.shape)}")
    if values_checkable(zp) and bool(((zp < 0) | (zp > 255)).any()):
        raise ValueError("zero_point must be in [0, 255]")
    return zp


def dequantize_int8(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int | None = None,
    axis: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in ``dtype``; ``q`` int8 (symmetric) or uint8 (asymmetric)."""
    check_tensor(q, "q", dtypes=(torch.int8, torch.uint8))
    if dtype not in _IN_DTYPES:
        raise ValueError(f"dtype must be one of {_IN_DTYPES}, got {dtype}")
    if axis is not None:
        axis = check_axis(axis, q)
    scale = check_scale(scale, q, axis)
    y = q.to(torch.float32)
    if zero_point is not None:
        y = y - broadcast_scale(_check_zero_point(zero_point, scale).to(torch.float32), q, axis)
    return (y * broadcast_scale(scale, q, axis)).to(dtype)
