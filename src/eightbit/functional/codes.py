"""8-bit code maps (256 sorted float32 values in [-1, 1] or [0, 1]) for block-wise quantization.

The dynamic (tree) code of Dettmers et al. (2021, "8-bit Optimizers via Block-wise Quantization") is the
default for optimizer states: signed for first moments / momentum, unsigned for second moments.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import torch

from .._checks import FLOAT_DTYPES, check_bool, check_tensor

__all__ = ["Codebook", "codebook", "dynamic_codebook", "binary_codebook", "create_dynamic_map",
           "create_binary_dynamic_map", "create_linear_map", "create_quantile_map", "BINARY_GROUPS"]


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """A validated 256-entry code map with what quantizing onto it needs, built once per code tensor.

    ``values``: the 256 sorted float32 codes (on the code tensor's device); ``midpoints``: the 255 float32
    midpoints between neighbours (nearest code of ``n`` = number of midpoints below ``n``, ties to the lower
    code); ``zero_index``: index of the code nearest 0 (what a block holding NaN/Inf is filled with);
    ``signed``: whether the map has negative codes; ``groups``: for a binary dynamic map
    (:func:`create_binary_dynamic_map`) its group layout, else None. Blocks quantized onto a binary dynamic map
    are scaled by a power of two (:attr:`pow2_scale`) instead of their absmax. Kernels keep the derived lookup
    tables they need in ``table(name, build)``, built on first use and kept with the codebook.
    """

    values: torch.Tensor
    midpoints: torch.Tensor
    zero_index: int
    signed: bool
    groups: tuple | None = None
    _tables: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def pow2_scale(self) -> bool:
        """Whether blocks are scaled by the power of two above their absmax (binary dynamic maps: then every
        normalized value is below 1 and the division by the scale is exact) rather than by the absmax."""
        return self.groups is not None

    def __deepcopy__(self, memo: dict) -> "Codebook":
        # immutable, and its kernel tables hold ctypes pointers that cannot be copied: a deep copy of a code tensor
        # (copy.deepcopy of an optimizer) carries this cache entry along, keyed on the original's address, so the
        # copy builds its own codebook on first use
        return self

    def table(self, name: str, build: Callable[["Codebook"], Any]) -> Any:
        """The derived object ``name`` of this codebook, ``build(self)`` on first request (kernel tables)."""
        hit = self._tables.get(name, self)
        if hit is self:
            hit = self._tables[name] = build(self)
        return hit

    def to(self, device: torch.device | str) -> "Codebook":
        """This codebook on ``device`` (cached: the same object on every call)."""
        device = torch.device(device)
        if self.values.device == device:
            return self
        return self.table(("device", str(device)), lambda cb: codebook(cb.values.to(device)))


def _version_key(code: torch.Tensor) -> tuple[int, int]:
    # inference tensors keep no version counter (and cannot be changed outside inference mode): key on the address
    return (-1 if code.is_inference() else code._version, code.data_ptr())


def _check_code_shape(code: object) -> None:
    check_tensor(code, "code", dtypes=(torch.float32,), ndim=1)
    if code.numel() != 256:
        raise ValueError(f"code must have 256 entries, got {code.numel()}")


def _build_codebook(code: torch.Tensor) -> Codebook:
    if code.is_meta:
        return Codebook(code, torch.empty(255, dtype=torch.float32, device=code.device), 0, True)
    if not bool(torch.isfinite(code).all()):
        raise ValueError("code must hold finite values only (got NaN or Inf)")
    if not bool((code[1:] >= code[:-1]).all()):
        raise ValueError("code must be sorted in non-decreasing order")
    c = code.double()
    mid = ((c[1:] + c[:-1]) / 2).float()
    signed = bool(c[0] < 0)
    groups = BINARY_GROUPS[signed] if torch.equal(code.cpu(), _binary_map(signed)) else None
    return Codebook(code, mid, int(c.abs().argmin()), signed, groups)



def codebook(code: object) -> Codebook:
    """The :class:`Codebook` of ``code`` (1-D float32, 256 finite non-decreasing values), validated and built
    once per tensor; an in-place change of ``code`` (``_version``) builds it anew. Raises TypeError for a
    non-float32 tensor, ValueError for a wrong size, NaN/Inf, or unsorted values.

    The codebook is kept on the tensor object itself (not in a global cache), so it lives exactly as long as
    the code tensor: the reference cycle code -> codebook -> code is collected with it."""
    hit = code.__dict__.get("_eightbit_codebook") if isinstance(code, torch.Tensor) else None
    # the checks below in a cheap form first: an optimizer step asks once per state (and tensor checks cost ~1 us)
    if hit is not None and code.dtype == torch.float32 and code.shape == (256,) and hit[0] == _version_key(code):
        return hit[1]
    _check_code_shape(code)
    key = _version_key(code)
    if hit is not None and hit[0] == key:
        return hit[1]
    cb = _build_codebook(code)
    code._eightbit_codebook = (key, cb)
    return cb


@functools.lru_cache(maxsize=None)
def dynamic_codebook(signed: bool, device: torch.device | str = "cpu") -> Codebook:
    """The codebook of the default dynamic map (``create_dynamic_map(signed)``) on ``device`` (cached; built as a
    normal tensor even when first asked for under ``torch.inference_mode``)."""
    with torch.inference_mode(False):
        return codebook(create_dynamic_map(signed=signed).to(device))


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


# Group layout of the binary dynamic maps, from the largest magnitudes down: (binades, fraction bits) per group.
# Group g of the magnitude codes holds the codes whose leading one is bit (bits - 1 - g) (bits: 7 signed, 8
# unsigned), so each group has half the codes of the one above; the fraction bits buy precision where the
# values are large, the one-code binades at the bottom buy range. Signed: the decimal map's shape (codes halve
# every decade) in base 16 (they halve every four binades), so a block with a 10^4 outlier keeps its small
# values (error 0.10 vs the decimal map's 0.15; a top-heavy layout zeroed 68 % of them). Unsigned (second
# moments, rounded stochastically): top-heavy, as v's error follows the top binades' precision. Chosen on the
# 10,000-step AdamW run and outlier blocks (docs/optimizers.md).
BINARY_GROUPS: dict[bool, tuple[tuple[int, int], ...]] = {
    True: ((4, 4), (4, 3), (4, 2), (4, 1), (4, 0), (2, 0), (1, 0)),  # 23 binades: down to 2^-23
    False: ((1, 7), (1, 6), (2, 4), (4, 2), (8, 0), (4, 0), (2, 0), (1, 0)),  # 23 binades: down to 2^-23
}


def _binary_magnitudes(signed: bool) -> list[float]:
    out, k = [], 0
    for binades, bits in BINARY_GROUPS[signed]:
        for _ in range(binades):
            out += [2.0 ** -(k + 1) * (1 + f / 2**bits) for f in range(2**bits)]
            k += 1
    return sorted(out)


@functools.lru_cache(maxsize=None)
def _binary_map(signed: bool) -> torch.Tensor:
    mags = _binary_magnitudes(signed)
    vals = [0.0] + mags + ([0.0] + [-m for m in mags] if signed else [])
    with torch.inference_mode(False):
        return torch.tensor(sorted(vals), dtype=torch.float32)


def create_binary_dynamic_map(signed: bool = True) -> torch.Tensor:
    """The binary dynamic code: 256 sorted float32 values in (-1, 1) (signed) or [0, 1), eightbit's default code
    for 8-bit optimizer states.

    Like the dynamic tree code, a code is a sign bit (signed only), a run of leading zeros selecting a group
    of binades, and a linear fraction; unlike it, exponents are binary (each binade [2^-(k+1), 2^-k) holds
    2^bits evenly spaced values ``2^-(k+1) * (1 + f / 2^bits)``, :data:`BINARY_GROUPS`), so every gap between
    neighbours is a power of two. With blocks scaled by a power of two (:attr:`Codebook.pow2_scale`), encoding
    (nearest or stochastic) and decoding are integer operations on float32 bits, exactly equal to the table
    search: no table lookups in the kernels. Signed: 127 magnitudes per sign and two zeros (indices 127,
    128); unsigned: 0 and 255 magnitudes. TypeError for a non-bool ``signed``."""
    check_bool(signed, "signed")
    return _binary_map(signed).clone()


@functools.lru_cache(maxsize=None)
def binary_codebook(signed: bool, device: torch.device | str = "cpu") -> Codebook:
    """The codebook of ``create_binary_dynamic_map(signed)`` on ``device`` (cached)."""
    with torch.inference_mode(False):
        return codebook(create_binary_dynamic_map(signed=signed).to(device))


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """Evenly spaced float32 codes, as bitsandbytes' ``create_linear_map``: ``2**total_bits`` values over [-1, 1]
    (signed) or [0, 1]; with ``add_zero`` (or fewer than 8 bits) a signed map spends one value on an exact 0
    (255 values over [-1, 1] plus 0). Fewer bits are simulated by padding with zeros to 256 entries. Returned
    sorted (bitsandbytes places the padding in the middle; the set of values is the same). TypeError for a
    non-bool ``signed``/``add_zero``, ValueError for ``total_bits`` outside 1..8."""
    check_bool(signed, "signed")
    check_bool(add_zero, "add_zero")
    if isinstance(total_bits, bool) or not isinstance(total_bits, int) or not 1 <= total_bits <= 8:
        raise ValueError(f"total_bits must be an int in [1, 8], got {total_bits!r}")
    n = 2**total_bits
    if signed and (add_zero or total_bits < 8):
        n -= 1
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, n, dtype=torch.float32)
    values = torch.cat([values, torch.zeros(256 - n)])
    return values.sort().values


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
