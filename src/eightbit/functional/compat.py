"""bitsandbytes' functional names for the LLM.int8() building blocks, with its semantics, so that code calling
``bitsandbytes.functional`` switches by changing the import. The int8 products run through eightbit's exact
ops (``int8_mm``); the rest is plain PyTorch (these are building blocks, not the fused fast path, which is
``int8_linear`` / ``Linear8bitLt``).

Semantics as bitsandbytes: with a threshold, the outlier *elements* (``|A| >= threshold``) are left out of the
row absmax, and the codes of every outlier column are zero (when A has more than one row); ``int8_mm_dequant``
returns float16. eightbit's own :func:`~eightbit.functional.int8_vectorwise_quant_columns` differs on purpose: it
leaves whole outlier columns out of the absmax (the paper's decomposition; what ``int8_linear`` computes).
"""
from __future__ import annotations

import itertools
import math

import torch

from .._checks import FLOAT_DTYPES, check_number, check_tensor
from .int8 import int8_mm

__all__ = ["int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_double_quant", "int8_linear_matmul",
           "int8_mm_dequant", "create_fp8_map"]


def _outliers(A: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(A as float32 with outlier elements zeroed, outlier element mask or None, outlier column indices or None)."""
    x = A.float().reshape(-1, A.shape[-1]) if A.dim() != 2 else A.float()
    if threshold <= 0:
        return x, None, None
    mask = x.abs() >= threshold
    cols = mask.any(dim=0).nonzero().view(-1)
    return x.masked_fill(mask, 0.0), mask, cols


def _quant(x: torch.Tensor, absmax: torch.Tensor, dim: int) -> torch.Tensor:
    scale = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax)).unsqueeze(dim)
    return torch.round(x * scale).clamp_(-127, 127).to(torch.int8)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise int8 quantization ``(CB, SCB, outlier_cols)`` of float ``A`` [..., K] (rows flattened): int8
    codes [rows, K] (``A``'s shape), float32 row absmax [rows], and the int64 indices of the columns holding an
    element with ``|A| >= threshold`` (None when ``threshold == 0``). ``A`` is not modified."""
    check_tensor(A, "A", dtypes=FLOAT_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    x, mask, cols = _outliers(A, threshold)
    row_stats = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    q = _quant(x, row_stats, 1)
    if cols is not None and x.shape[0] > 1:
        q[:, cols] = 0
    return q.view(A.shape), row_stats, cols


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """float32 ``A * stats / 127`` for int8 ``A`` [rows, K] and its row absmax ``stats`` [rows]."""
    check_tensor(A, "A", dtypes=(torch.int8,))
    return A.float() * (stats.float().view(-1, 1) / 127.0)


def int8_double_quant(A: torch.Tensor, col_stats=None, row_stats=None, out_col=None, out_row=None,
                      threshold: float = 0.0):
    """Row-wise and column-wise int8 quantization of float ``A`` [rows, K]: ``(CB_row, CB_col, row_stats,
    col_stats, outlier_cols)``; outliers as in :func:`int8_vectorwise_quant` (left out of both statistics, their
    columns zero in both code matrices). Pre-allocated outputs are not supported (ValueError), as in
    bitsandbytes."""
    for name, v in (("col_stats", col_stats), ("row_stats", row_stats), ("out_col", out_col), ("out_row", out_row)):
        if v is not None:
            raise ValueError(f"{name} must be None: int8_double_quant does not take pre-allocated outputs")
    check_tensor(A, "A", dtypes=FLOAT_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    x, _, cols = _outliers(A, threshold)
    rs = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    cs = x.abs().amax(dim=0) if x.shape[0] else x.new_zeros(x.shape[1])
    q_row, q_col = _quant(x, rs, 1), _quant(x, cs, 0)
    if cols is not None and x.shape[0] > 1:
        q_row[:, cols] = 0
        q_col[:, cols] = 0
    return q_row.view(A.shape), q_col.view(A.shape), rs, cs, cols


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None,
                       dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Exact int32 ``A @ B.T`` for int8 ``A`` [..., K] (any leading dims) and int8 ``B`` [N, K]; into ``out``
    (int32 [..., N]) when given. ``dtype`` must be int32."""
    if dtype != torch.int32:
        raise ValueError(f"dtype must be torch.int32, got {dtype}")
    check_tensor(A, "A", dtypes=(torch.int8,), min_ndim=1)
    lead = A.shape[:-1]
    res = int8_mm(A.reshape(math.prod(lead), A.shape[-1]), B).view(*lead, B.shape[0])
    if out is not None:
        if out.shape != res.shape or out.dtype != torch.int32:
            raise ValueError(f"out must be int32 of shape {tuple(res.shape)}, got {out.dtype} {tuple(out.shape)}")
        return out.copy_(res)
    return res


def int8_mm_dequant(A: torch.Tensor, row_stats: torch.Tensor, col_stats: torch.Tensor,
                    out: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float16 ``A * outer(row_stats, col_stats) / 127**2 (+ bias)`` for the int32 product ``A`` [..., N] of two
    row-wise quantized int8 matrices (``row_stats`` [rows], ``col_stats`` [N]); computed in float32."""
    check_tensor(A, "A", dtypes=(torch.int32,), min_ndim=1)
    acc = A.reshape(-1, A.shape[-1]).float()
    res = acc * (row_stats.float().view(-1, 1) / 127.0) * (col_stats.float().view(1, -1) / 127.0)
    if bias is not None:
        res = res + bias.float()
    res = res.to(torch.float16).view(A.shape)
    return out.copy_(res) if out is not None else res


def create_fp8_map(signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2,
                   total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' small-float code map: every value of a float format with ``exponent_bits`` and
    ``precision_bits`` (bias ``2**(exponent_bits-1)``, subnormals at exponent field 0; no inf/NaN codes), plus a sign
    when ``signed``, normalized by the largest value, padded with zeros to 256 entries when ``total_bits < 8``,
    sorted (float32). ValueError when the bit counts do not add up to ``total_bits``."""
    for name, v in (("exponent_bits", exponent_bits), ("precision_bits", precision_bits), ("total_bits", total_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if exponent_bits + precision_bits + int(bool(signed)) != total_bits or not 1 <= total_bits <= 8:
        raise ValueError(f"sign ({int(bool(signed))}) + exponent_bits ({exponent_bits}) + precision_bits "
                         f"({precision_bits}) must equal total_bits ({total_bits}) in 1..8")
    bias = 2 ** (exponent_bits - 1)
    values: list[float] = []
    for e in range(2**exponent_bits):
        for bits in itertools.product((0, 1), repeat=precision_bits):
            frac = sum(b * 2.0 ** -(i + 1) for i, b in enumerate(bits))
            # exponent field 0: subnormals (no implicit 1); else normals, largest exponent field first
            v = frac * 2.0**-bias if e == 0 else (1 + frac) * 2.0 ** -(e - bias - 1)
            values.append(v)
            if signed:
                values.append(-v)
    values += [0.0] * (256 - len(values))
    code = torch.tensor(sorted(values), dtype=torch.float32)
    return code / code.max()
