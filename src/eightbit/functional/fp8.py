"""FP8 quantization (FP8-BERT, arXiv 2312.05725): symmetric scaling, then a cast to an 8-bit float format.

Formats (``FP8_FORMATS``): ``"e4m3"`` (OCP/NVIDIA E4M3 "fn": bias 7, max 448, no inf, NaN = S.1111.111),
``"e5m2"`` (IEEE-like: bias 15, max 57344, +-inf and NaN), and the Graphcore/AMD "fnuz" variants
``"e4m3fnuz"`` (bias 8, max 240) and ``"e5m2fnuz"`` (bias 16, max 57344) with a single NaN 0x80, no inf and
no negative zero. ``"e4m3fn"`` is accepted as an alias of ``"e4m3"``.

Storage: codes are returned as the matching torch float8 dtype (``torch.float8_e4m3fn`` ...), one byte per
value; ``q.view(torch.uint8)`` gives the bit patterns. Casting rounds to nearest, ties to even, bit-exact
with PyTorch's own casts on all finite in-range inputs.

Special values (``y = x / scale``):

* ``saturate=True`` (default): finite ``|y|`` beyond max becomes +-max, and so does +-Inf (NVIDIA's
  "satfinite" convention); NaN stays NaN.
* ``saturate=False`` follows the format: overflow (after rounding) and +-Inf become +-inf for e5m2 and
  NaN for the formats without infinities; NaN stays NaN.
* ``scale=None`` computes ``amax / max`` from the finite values only, so one Inf or NaN does not wipe out
  the rest of the tensor/channel; an all-zero (or all non-finite) tensor/channel gets scale 1. The
  computed scale is capped so that ``max * scale`` stays finite in float32 (matters only for amax near
  float32 max).

Empty tensors work with and without ``axis``; meta tensors give meta codes and scales of the right
shapes and dtypes (no data-dependent checks), so fp8 layers can be built on the meta device.
"""
from __future__ import annotations

import dataclasses

import torch

from .._checks import check_bool, check_choice, check_tensor
from . import ops
from .affine import absmax_scale, broadcast_scale, check_axis, check_scale

_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclasses.dataclass(frozen=True)
class FP8Format:
    """Description of one 8-bit float format (1 sign bit, ``exp_bits`` + ``man_bits`` = 7)."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max: float
    has_inf: bool
    fnuz: bool
    dtype: torch.dtype

    @property
    def max_code(self) -> int:
        """Bit pattern of +max (sign bit clear)."""
        return int(torch.tensor(self.max).to(self.dtype).view(torch.uint8))

    @property
    def nan_code(self) -> int:
        """Bit pattern used for NaN (0x80 for fnuz, all ones below the sign bit otherwise)."""
        return 0x80 if self.fnuz else 0x7F

    @property
    def overflow_code(self) -> int:
        """Bit pattern of a non-saturating overflow (+inf for e5m2, NaN otherwise)."""
        return 0x7C if self.has_inf else self.nan_code

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2**(1 - bias - man_bits)."""
        return 2.0 ** (1 - self.bias - self.man_bits)

    @property
    def overflow_threshold(self) -> float:
        """Smallest ``|y|`` that rounds beyond ``max`` (then saturates or overflows)."""
        ulp = 2.0 ** (self.max_code >> self.man_bits) / 2.0 ** (self.bias + self.man_bits)
        half = torch.tensor(self.max + ulp / 2, dtype=torch.float32)
        if self.max_code & 1:  # round-to-even: a tie goes away from an odd max, i.e. overflows
            return float(half)
        return float(torch.nextafter(half, torch.tensor(float("inf"))))


FP8_FORMATS: dict[str, FP8Format] = {
    "e4m3": FP8Format("e4m3", 4, 3, 7, 448.0, False, False, torch.float8_e4m3fn),
    "e5m2": FP8Format("e5m2", 5, 2, 15, 57344.0, True, False, torch.float8_e5m2),
    "e4m3fnuz": FP8Format("e4m3fnuz", 4, 3, 8, 240.0, False, True, torch.float8_e4m3fnuz),
    "e5m2fnuz": FP8Format("e5m2fnuz", 5, 2, 16, 57344.0, False, True, torch.float8_e5m2fnuz),
}
_ALIASES = {"e4m3fn": "e4m3"}
FORMAT_NAMES = tuple(FP8_FORMATS) + tuple(_ALIASES)
FORMAT_OF_DTYPE: dict[torch.dtype, FP8Format] = {f.dtype: f for f in FP8_FORMATS.values()}


def get_format(format: str | FP8Format) -> FP8Format:
    """The ``FP8Format`` called ``format`` (ValueError naming the choices otherwise)."""
    if isinstance(format, FP8Format):
        return format
    check_choice(format, "format", FORMAT_NAMES)
    return FP8_FORMATS[_ALIASES.get(format, format)]


def _cast_reference(y: torch.Tensor, fmt: FP8Format, saturate: bool) -> torch.Tensor:
    """Plain-PyTorch cast of fp32 ``y`` with the documented saturate/overflow semantics."""
    if saturate:
        return y.clamp(-fmt.max, fmt.max).to(fmt.dtype)  # clamp keeps NaN and maps +-inf to +-max
    q = y.to(fmt.dtype)
    if not fmt.has_inf and not fmt.fnuz:
        # PyTorch's e4m3fn cast saturates; the format's own non-saturating rule is NaN on overflow
        over = y.abs() >= fmt.overflow_threshold
        q = torch.where(over, torch.tensor(float("nan")).to(fmt.dtype), q)
    return q


@ops.reference("quantize_fp8")
def quantize_fp8_reference(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype, saturate: bool) -> torch.Tensor:
    """Reference of the ``quantize_fp8`` op: uint8 bit patterns of the ``fp8_dtype`` codes of ``x / scale``
    (``scale`` float32, broadcastable to ``x``)."""
    return _cast_reference(x.to(torch.float32) / scale, FORMAT_OF_DTYPE[fp8_dtype], saturate).view(torch.uint8)


@ops.reference("dequantize_fp8")
def dequantize_fp8_reference(q: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype,
                             dtype: torch.dtype) -> torch.Tensor:
    """Reference of the ``dequantize_fp8`` op: ``q * scale`` in ``dtype`` for uint8 bit patterns ``q`` of
    ``fp8_dtype`` codes."""
    return (q.view(fp8_dtype).to(torch.float32) * scale).to(dtype)


def fp8_bits(x: torch.Tensor, fmt: FP8Format, scale: torch.Tensor, axis: int | None, saturate: bool) -> torch.Tensor:
    """uint8 bit patterns of the codes of ``x / scale`` without argument checks (callers pass a scale they built or
    validated)."""
    return ops.quantize_fp8(x.contiguous(), broadcast_scale(scale, x, axis).contiguous(), fmt.dtype, saturate)


def fp8_cast(x: torch.Tensor, fmt: FP8Format, scale: torch.Tensor, axis: int | None, saturate: bool) -> torch.Tensor:
    """:func:`fp8_bits` as ``fmt``'s float8 dtype."""
    return fp8_bits(x, fmt, scale, axis, saturate).view(fmt.dtype)


def fp8_decode(q: torch.Tensor, fmt: FP8Format, scale: torch.Tensor, axis: int | None, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` in ``dtype`` without argument checks (``q`` in ``fmt``'s dtype or its uint8 bit patterns)."""
    bits = q if q.dtype == torch.uint8 else q.view(torch.uint8)
    return ops.dequantize_fp8(bits.contiguous(), broadcast_scale(scale, q, axis).contiguous(), fmt.dtype, dtype)


def quantize_fp8(
    x: torch.Tensor,
    format: str = "e4m3",
    scale: torch.Tensor | float | None = None,
    axis: int | None = None,
    saturate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to fp8: ``q = cast(x / scale)``; returns ``(q, scale)``.

    ``x``: float tensor (fp32/bf16/fp16/fp64). ``scale=None``: symmetric absmax scale ``amax / max`` per
    tensor (``axis=None``, a 0-dim fp32 tensor) or per slice along ``axis`` (shape ``(x.shape[axis],)``).
    A given ``scale`` (positive, finite) is a number, a 0-dim tensor, or per-channel ``(x.shape[axis],)``.
    ``q`` has ``x``'s shape and the format's torch float8 dtype. See the module docstring for NaN/Inf.
    Raises TypeError/ValueError on a bad ``x``, ``format``, ``axis``, ``scale`` or ``saturate`` (a bool).
    """
    check_tensor(x, "x", dtypes=_IN_DTYPES)
    fmt = get_format(format)
    check_bool(saturate, "saturate")
    if axis is not None:
        axis = check_axis(axis, x)
    scale = absmax_scale(x, fmt.max, axis) if scale is None else check_scale(scale, x, axis)
    return fp8_cast(x, fmt, scale, axis, saturate), scale


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    format: str = "e4m3",
    axis: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``q * scale`` in ``dtype``. ``q``: codes in the format's float8 dtype (or their uint8 bit patterns);
    ``scale`` as returned by ``quantize_fp8`` (per tensor, or ``(q.shape[axis],)`` with ``axis``)."""
    fmt = get_format(format)
    check_tensor(q, "q", dtypes=(fmt.dtype, torch.uint8))
    check_choice(dtype, "dtype", _IN_DTYPES)
    if axis is not None:
        axis = check_axis(axis, q)
    return fp8_decode(q, fmt, check_scale(scale, q, axis), axis, dtype)


def fp8_values(format: str = "e4m3") -> torch.Tensor:
    """All finite non-negative values of ``format``, sorted (fp32)."""
    fmt = get_format(format)
    v = torch.arange(128, dtype=torch.uint8).view(fmt.dtype).to(torch.float32)
    return torch.unique(v[torch.isfinite(v)])
