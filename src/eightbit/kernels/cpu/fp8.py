"""Native CPU kernels of the fp8 ops and of ``finite_amax`` (csrc/fp8_cpu.c).

``quantize_fp8``: fp32 -> fp8 bit patterns by integer bit manipulation (round to nearest even; subnormals by
adding a power of two whose ulp is the fp8 subnormal step, so the FPU rounds), fused with the division by the
scale: one read of the input and one byte written per value, bit-identical to PyTorch's own casts (tests).
``dequantize_fp8``: a 256-entry table lookup times the scale. Scales are one value or one per leading index
(per-channel weights); other layouts go to the reference.
``fp8_linear``: a GEMM on the codes with AVX-512 BF16 (csrc/fp8_gemm.c: every fp8 code is exactly a bfloat16 and
their products are exact in float32), where the CPU has it; elsewhere the reference dequantizes and runs F.linear.
"""
from __future__ import annotations

import struct

import torch

from ...functional.fp8 import FORMAT_OF_DTYPE
from ..registry import register
from . import native


def _bits_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<i", bits))[0]


_tables: dict[torch.dtype, torch.Tensor] = {}


def decode_table(fp8_dtype: torch.dtype) -> torch.Tensor:
    """fp32 value of each of the 256 codes of ``fp8_dtype`` (from PyTorch's own cast, so exact)."""
    t = _tables.get(fp8_dtype)
    if t is None:
        t = _tables[fp8_dtype] = torch.arange(256, dtype=torch.uint8).view(fp8_dtype).to(torch.float32)
    return t


@register("quantize_fp8", "cpu", available=native.available)
def quantize_fp8_cpu(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype, saturate: bool):
    """Kernel of ``quantize_fp8``: uint8 bit patterns of the ``fp8_dtype`` codes of ``x / scale``."""
    f = FORMAT_OF_DTYPE[fp8_dtype]
    xf = (x if x.dtype == torch.float32 else x.to(torch.float32)).contiguous()
    magic = _bits_to_float((127 + 24 - f.bias - f.man_bits) << 23)
    out = native.rowwise(xf, [scale], lambda lib, xs, ps, stride, rows, cols, o: lib.eb_fp32_to_fp8(
        xs, ps[0], stride, rows, cols, magic, f.man_bits, f.bias, f.max_code, f.nan_code, f.overflow_code,
        int(bool(saturate)), int(f.fnuz), o), torch.uint8)
    return NotImplemented if out is None else out


@register("dequantize_fp8", "cpu", available=native.available)
def dequantize_fp8_cpu(q: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype, dtype: torch.dtype):
    """Kernel of ``dequantize_fp8``: ``table[q] * scale`` in float32 for uint8 bit patterns ``q``, then cast."""
    table = decode_table(fp8_dtype)
    codes = q.contiguous()
    out = native.rowwise(codes, [scale], lambda lib, cs, ps, stride, rows, cols, o: lib.eb_fp8_to_fp32(
        cs, native.ptr(table), ps[0], stride, rows, cols, o), torch.float32)
    if out is None:
        return NotImplemented
    return out if dtype == torch.float32 else out.to(dtype)


@register("finite_amax", "cpu", available=native.available)
def finite_amax_cpu(x: torch.Tensor, axis: int | None):
    """Kernel of ``finite_amax`` for a whole float32 tensor: max |x| in one native pass without an |x|-sized
    temporary (``x.abs().amax()`` allocates one: ~100 ms of page faults for 256 MB on this project's VM). Per-axis
    scales, other dtypes, empty tensors and tensors holding NaN/Inf go to the reference."""
    if axis is not None or x.dtype != torch.float32 or x.numel() == 0 or native.library() is None:
        return NotImplemented
    bits = int(native.library().eb_absmax_bits(native.ptr(x.contiguous()), x.numel()))
    if bits >= 0x7F800000:
        return NotImplemented
    return torch.tensor(_bits_to_float(bits), dtype=torch.float32)


_bf16_tables: dict[torch.dtype, torch.Tensor] = {}


def bf16_table(fp8_dtype: torch.dtype) -> torch.Tensor:
    """bfloat16 bit patterns (int16) of the 256 codes of ``fp8_dtype``: exact, every fp8 value is a bfloat16."""
    t = _bf16_tables.get(fp8_dtype)
    if t is None:
        t = _bf16_tables[fp8_dtype] = decode_table(fp8_dtype).to(torch.bfloat16).view(torch.int16).contiguous()
    return t


def _fp8_gemm_available() -> bool:
    return native.available() and bool(native.library().eb_fp8_gemm_supported())


@register("fp8_linear", "cpu", available=_fp8_gemm_available)
def fp8_linear_cpu(x_q, x_scale, w_q, w_scale, bias, fp8_dtype, dtype):
    """Kernel of ``fp8_linear``: ``((codes(x) @ codes(w).T) * x_scale) * w_scale + bias`` with exact products and
    float32 sums (``eb_fp8_linear``), cast to ``dtype``. Empty shapes and allocation failures go to the reference."""
    m, k = x_q.shape
    n = w_q.shape[0]
    lib = native.library()
    if m == 0 or n == 0 or k == 0 or lib is None or not lib.eb_fp8_gemm_supported():
        return NotImplemented
    p = native.ptr
    xs = x_scale.to(torch.float32).contiguous()
    ws = w_scale.to(torch.float32).contiguous()
    b = None if bias is None else bias.to(torch.float32).contiguous()
    out = native.empty((m, n), dtype=torch.float32)
    if lib.eb_fp8_linear(p(x_q.contiguous()), p(w_q.contiguous()), p(bf16_table(fp8_dtype)), p(xs),
                          int(xs.dim() > 0), p(ws), int(ws.dim() > 0), p(b), p(out), m, k, n):
        return NotImplemented
    return out if dtype == torch.float32 else out.to(dtype)
