"""Hostile-but-valid tensors for the reliability property tests: odd shapes, non-contiguous layouts,
fp32/bf16/fp16, and special values (0, -0, subnormals, the dtype's max, NaN, +-Inf) planted at
hypothesis-chosen positions. Values come from a seeded generator so a failing example replays exactly."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "transposed", "strided")
FINITE_SPECIALS = ("zero", "negzero", "subnormal", "dtype_max", "neg_dtype_max", "tiny_normal")
NONFINITE_SPECIALS = ("nan", "inf", "-inf")


def special_value(kind: str, dtype: torch.dtype) -> float:
    """The float value of a special ``kind`` representable in ``dtype``."""
    fi = torch.finfo(dtype)
    return {
        "zero": 0.0,
        "negzero": -0.0,
        "subnormal": fi.smallest_normal / 4,  # exactly representable subnormal of dtype
        "tiny_normal": fi.smallest_normal,
        "dtype_max": fi.max,
        "neg_dtype_max": -fi.max,
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
    }[kind]


def make_tensor(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    data_seed: int,
    *,
    log10_scale: float = 0.0,
    layout: str = "contiguous",
    specials: list[tuple[float, str]] = (),
) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` (Gaussian times 10**log10_scale, clamped to the dtype's range)
    in the requested memory ``layout``, with ``specials`` = [(position in [0, 1), kind)] planted."""
    g = torch.Generator().manual_seed(data_seed)
    fi = torch.finfo(dtype)
    if layout == "transposed" and len(shape) == 2:
        base_shape = (shape[1], shape[0])
    elif layout == "strided" and len(shape) >= 1:
        base_shape = (*shape[:-1], 2 * shape[-1])
    else:
        base_shape = shape
    base = (torch.randn(base_shape, generator=g, dtype=torch.float64) * 10.0**log10_scale).clamp(-fi.max, fi.max)
    base = base.to(dtype)
    if layout == "transposed" and len(shape) == 2:
        x = base.t()
    elif layout == "strided" and len(shape) >= 1:
        x = base[..., ::2]
    else:
        x = base
    assert tuple(x.shape) == tuple(shape)
    n = x.numel()
    if n:
        idx = torch.arange(n).view(x.shape)  # flat (row-major) index of each logical element
        for pos, kind in specials:
            where = idx == int(pos * n)
            x.masked_fill_(where, special_value(kind, dtype))  # writes through the view into base
    return x


def specials_strategy(nonfinite: bool = True, max_size: int = 4):
    kinds = FINITE_SPECIALS + (NONFINITE_SPECIALS if nonfinite else ())
    return st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(kinds)), max_size=max_size)


def clean_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` (as float32) with every NaN/Inf replaced by 0."""
    xf = x.float()
    return torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf))
