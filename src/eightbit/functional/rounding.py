"""Stochastic rounding onto a sorted code map, driven by counter-based draws (no RNG state).

Why: a slowly changing quantity stored in 8 bits (Adam's second moment decaying by 0.1 % a step, an
Adagrad sum growing by tiny increments) cannot move under round-to-nearest once each step's change is
below half a code step: the stored value freezes and its error grows. Rounding up with probability equal
to the distance from the lower code makes the stored value exact in expectation, so it keeps following.

The draw of element ``i`` is a function of ``(i, seed)`` with ``seed`` a hash of (step, state): no RNG state,
reproducible (same seed, same codes), the same in every process and rank, and identical between this
reference and the native CPU kernel (same integer arithmetic; no int64 product overflows).
"""
from __future__ import annotations

import torch

__all__ = ["mix31", "step_seed", "uniform_from_index", "stochastic_round"]

M31 = 0x7FFFFFFF
_K1, _K2 = 0x2C1B3C6D, 0x297A2D39


def mix31(x):
    """31-bit integer hash of ``x`` (a Python int or an int64 tensor with values in [0, 2**31))."""
    x = x ^ (x >> 15)
    x = (x * _K1) & M31
    x = x ^ (x >> 12)
    x = (x * _K2) & M31
    return x ^ (x >> 15)


def step_seed(step: int, slot: int) -> int:
    """Seed of state ``slot`` (0, 1, ...) of an optimizer at ``step``: differs per step and per state."""
    return mix31((step * 8 + slot) & M31)


_PHI = 0x9E3779B9  # 2^32 / golden ratio, odd: i * _PHI mod 2^32 visits every residue


def uniform_from_index(index: torch.Tensor, seed: int | torch.Tensor) -> torch.Tensor:
    """float32 draws in [0, 1) (24 bits) for int64 element indices ``index`` under ``seed`` (< 2**31): the Weyl
    sequence ``((index mod 2**31) * 0x9E3779B9 + 2 * seed) mod 2**32``, top 24 bits (the seed doubled so that
    its offsets cover the whole circle: each element's draws over steps are then uniform). One multiply per element (the
    native kernel does the same in uint32); neighbours get well-spread draws, and an element's draws over steps
    are uniform because ``seed`` is a hash of the step (:func:`step_seed`). Products stay below 2**63."""
    h = ((index & M31) * _PHI + (seed << 1)) & 0xFFFFFFFF
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


def stochastic_round(n: torch.Tensor, nearest: torch.Tensor, code: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices into sorted float32 ``code`` (256 values) that round ``n`` up or down at random, unbiased.

    n: float32 values within [code[0], code[-1]]; nearest: their round-to-nearest indices (int32/int64);
    u: float32 uniform draws of n's shape. Returns int32 indices: the lower neighbour ``lo`` plus one with
    probability ``(n - code[lo]) / (code[lo + 1] - code[lo])``; values on a code stay on it."""
    nearest = nearest.to(torch.int32)
    lo = (nearest - (code[nearest] > n).to(torch.int32)).clamp(0, code.numel() - 2)
    c_lo, c_hi = code[lo], code[lo + 1]
    frac = (n - c_lo) / (c_hi - c_lo)
    return lo + (u < frac).to(torch.int32)
