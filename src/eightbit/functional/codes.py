"""8-bit code maps (256 sorted float32 values in [-1, 1] or [0, 1]) for block-wise quantization.

The dynamic (tree) code of Dettmers et al. (2021, "8-bit Optimizers via Block-wise Quantization") is the
default for optimizer states: signed for first moments / momentum, unsigned for second moments.
"""
from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_bool, check_number, check_tensor

__all__ = ["create_dynamic_map", "create_linear_map", "create_quantile_map"]


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic tree code: 256 sorted float32 values in [-1, 1] (signed) or [0, 1] (unsigned).

    Each code is a sign bit (signed only), a run of zero bits whose length k is the decimal exponent
    (scale 10^-k), an indicator bit, and a linear fraction in the remaining bits. Decade k holds
    2^(bits left) evenly spaced fraction midpoints of [0.1, 1] times 10^-k, so magnitudes from ~1e-7 to 1
    are covered with most precision at large magnitudes. The map also holds exactly 0 and 1; the unsigned
    map spends the sign bit on one more fraction bit per decade. Matches bitsandbytes' values.

    Raises ValueError for bit counts that do not give a 2**total_bits-entry code (total_bits in 2..8),
    TypeError for a non-bool ``signed``.
    """
    check_bool(signed, "signed")
    if not isinstance(total_bits, int) or not 2 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in [2, 8], got {total_bits!r}")
    non_sign_bits = total_bits - 1
    if not isinstance(max_exponent_bits, int) or not 1 <= max_exponent_bits <= non_sign_bits:
        raise ValueError(f"max_exponent_bits must be an int in [1, {non_sign_bits}], got {max_exponent_bits!r}")
    values: list[float] = []
    extra_linear = 2 ** (non_sign_bits - max_exponent_bits) - 1  # codes whose exponent bits are all zero
    for k in range(max_exponent_bits):
        fraction_bits = k + non_sign_bits - max_exponent_bits + (0 if signed else 1)
        values += _decade(10.0 ** (k - (max_exponent_bits - 1)), 2**fraction_bits, signed)
    if extra_linear > 0:
        values += _decade(1.0, extra_linear, signed)
    values += [0.0, 1.0]
    # Fewer bits are simulated by padding with zeros, as bitsandbytes does.
    values += [0.0] * (256 - len(values))
    if len(values) != 256:
        raise ValueError(f"max_exponent_bits={max_exponent_bits} and total_bits={total_bits} give {len(values)} codes")
    return torch.tensor(sorted(values), dtype=torch.float32)


def _decade(scale: float, n: int, signed: bool) -> list[float]:
    # float32 boundaries like bitsandbytes so that values match bit for bit
    bounds = torch.linspace(0.1, 1, n + 1, dtype=torch.float32)
    means = (bounds[:-1] + bounds[1:]) / 2.0
    out = (scale * means).tolist()  # float32 product, as bitsandbytes computes it
    return out + (-scale * means).tolist() if signed else out


def create_linear_map(signed: bool = True) -> torch.Tensor:
    """256 evenly spaced float32 codes: 255 values over [-1, 1] plus one extra 0 (signed, so 0 is exact),
    or 256 values over [0, 1] (unsigned). Sorted. TypeError for a non-bool ``signed``."""
    check_bool(signed, "signed")
    if signed:
        v = torch.linspace(-1.0, 1.0, 255, dtype=torch.float32)
        return torch.cat([v, torch.zeros(1)]).sort().values
    return torch.linspace(0.0, 1.0, 256, dtype=torch.float32)


def create_quantile_map(x: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """Quantile code for the data ``x``: 256 sorted float32 codes at the midpoints of 257 equal-mass
    quantiles of ``x`` normalized by its absmax (so codes lie in [-1, 1]; [0, 1] of |x| when unsigned).

    The extreme codes are pinned to the data's normalized min and max so the absmax is exact.
    ``x``: any float tensor with at least one finite value (non-finite values are ignored).
    Raises TypeError for non-float input or a non-bool ``signed``, ValueError when no finite value exists.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES + (torch.float64,))
    check_bool(signed, "signed")
    v = x.detach().flatten().double()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        raise ValueError("x must hold at least one finite value")
    if not signed:
        v = v.abs()
    absmax = v.abs().max()
    v = v / absmax if absmax > 0 else v
    if v.numel() > 2**24:  # torch.quantile's input limit; a strided sample estimates quantiles as well
        v = v[:: -(-v.numel() // 2**24)]
    q = torch.quantile(v, torch.linspace(0, 1, 257, dtype=torch.float64))
    codes = (q[:-1] + q[1:]) / 2
    codes[0], codes[-1] = v.min(), v.max()
    return codes.sort().values.float()
