"""FP8 casts: bit-exact with PyTorch on every bf16 pattern and random fp32, saturate/NaN/Inf rules, scales."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbit.functional import FP8_FORMATS, dequantize_fp8, quantize_fp8
from eightbit.functional.fp8 import _cast_reference, fp8_values, get_format
from eightbit.kernels import reference_only
from eightbit.kernels.cpu.fp8 import dequantize_fp8_cpu, quantize_fp8_cpu
from tests.numerics import sqnr_db

FORMATS = list(FP8_FORMATS)
ONE = torch.tensor(1.0)


def fast_codes(y: torch.Tensor, name: str, saturate: bool) -> torch.Tensor:
    f = FP8_FORMATS[name]
    out = quantize_fp8_cpu(y.contiguous(), ONE, f.dtype, saturate)
    assert out is not NotImplemented, "native fp8 kernel declined"
    return out


def assert_same_codes(got: torch.Tensor, want: torch.Tensor, fmt) -> None:
    """Equal bit patterns, except that any NaN code matches any NaN code."""
    g, w = got.view(torch.uint8), want.view(torch.uint8)
    gn, wn = torch.isnan(g.view(fmt.dtype).float()), torch.isnan(w.view(fmt.dtype).float())
    assert torch.equal(gn, wn), "NaN positions differ"
    bad = (g != w) & ~wn
    assert not bad.any(), f"{int(bad.sum())} codes differ, e.g. got {g[bad][:5].tolist()} want {w[bad][:5].tolist()}"


ALL_BF16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()


@pytest.mark.parametrize("name", FORMATS)
def test_all_bf16_patterns_bit_exact(name):
    fmt = FP8_FORMATS[name]
    x = ALL_BF16
    in_range = x.abs() < fmt.overflow_threshold  # finite values PyTorch's cast defines without overflow
    torch_codes = x.to(fmt.dtype).view(torch.uint8)
    for saturate in (True, False):
        ref = _cast_reference(x, fmt, saturate)
        fast = fast_codes(x, name, saturate)
        assert_same_codes(fast, ref, fmt)
        assert torch.equal(fast[in_range], torch_codes[in_range])
        assert torch.equal(ref.view(torch.uint8)[in_range], torch_codes[in_range])


@pytest.mark.parametrize("name", FORMATS)
def test_random_fp32_subnormals_ties_near_max(name, gen):
    fmt = FP8_FORMATS[name]
    vals = fp8_values(name)
    mids = (vals[1:] + vals[:-1]) / 2  # exact ties between neighbours (round to even decides)
    parts = [
        torch.randn(50_000, generator=gen) * fmt.max / 4,
        torch.randn(50_000, generator=gen) * fmt.min_subnormal * 8,  # fp8 subnormal range
        torch.rand(20_000, generator=gen) * 1e-38,  # fp32 subnormals
        mids, torch.nextafter(mids, torch.zeros_like(mids)), torch.nextafter(mids, torch.full_like(mids, 1e30)),
        fmt.max * (1 + (torch.rand(20_000, generator=gen) - 0.5) * 0.2),  # around max
        torch.exp(torch.randn(20_000, generator=gen) * 20),
    ]
    x = torch.cat(parts)
    x = torch.cat([x, -x])
    in_range = x.abs() < fmt.overflow_threshold
    torch_codes = x.to(fmt.dtype).view(torch.uint8)
    for saturate in (True, False):
        fast = fast_codes(x, name, saturate)
        assert_same_codes(fast, _cast_reference(x, fmt, saturate), fmt)
        assert torch.equal(fast[in_range], torch_codes[in_range])


@pytest.mark.parametrize("name", FORMATS)
def test_special_values(name):
    fmt = FP8_FORMATS[name]
    big = fmt.max * 4
    x = torch.tensor([big, -big, float("inf"), -float("inf"), float("nan"), 0.0, -0.0])
    for fast in (False, True):
        ctx = reference_only() if not fast else torch.enable_grad()
        with ctx:
            xx = x.repeat(5000) if fast else x  # large input so the compiled kernel runs
            q, _ = quantize_fp8(xx, name, scale=1.0, saturate=True)
            v = q.float()[:7]
            assert v[:4].tolist() == [fmt.max, -fmt.max, fmt.max, -fmt.max]
            assert torch.isnan(v[4]) and v[5] == 0 and v[6] == 0
            q, _ = quantize_fp8(xx, name, scale=1.0, saturate=False)
            v = q.float()[:7]
            if fmt.has_inf:
                assert v[:4].tolist() == [float("inf"), -float("inf"), float("inf"), -float("inf")]
            else:
                assert torch.isnan(v[:4]).all()
            assert torch.isnan(v[4])
            codes = q.view(torch.uint8)[:7]
            if fmt.fnuz:  # no negative zero, single NaN 0x80
                assert codes[6] == 0 and codes[4] == 0x80
            else:
                assert codes[6] == 0x80


def test_fast_dequantize_matches_reference(gen):
    for name in FORMATS:
        fmt = FP8_FORMATS[name]
        codes = torch.randint(0, 256, (300, 70), dtype=torch.uint8, generator=gen)
        scale = torch.rand(300, generator=gen) + 0.1
        fast = dequantize_fp8_cpu(codes, scale[:, None], fmt.dtype, torch.float32)
        ref = codes.view(fmt.dtype).float() * scale[:, None]
        assert torch.equal(torch.isnan(fast), torch.isnan(ref))
        ok = ~torch.isnan(ref)
        assert torch.equal(fast[ok], ref[ok])


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_scales_per_tensor_and_channel(axis, gen):
    x = torch.randn(64, 48, generator=gen) * torch.logspace(-3, 3, 48)  # channels of very different range
    x[3] = 0.0  # a zero row
    x[:, 5] = 0.0  # a zero column
    q, s = quantize_fp8(x, "e4m3", axis=axis)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert torch.isfinite(s).all() and (s > 0).all()
    if axis is None:
        assert s.dim() == 0 and torch.isclose(s, x.abs().max() / 448)
    else:
        assert s.shape == (x.shape[axis],)
        amax = x.abs().amax(dim=1 - (axis % 2))
        assert torch.allclose(s, torch.where(amax > 0, amax / 448, torch.ones_like(amax)))
    y = dequantize_fp8(q, s, "e4m3", axis=axis)
    assert sqnr_db(x, y) > 28  # e4m3: 3 mantissa bits -> ~30 dB
    assert q.float().abs().max() <= 448


def test_zero_and_nonfinite_tensors():
    q, s = quantize_fp8(torch.zeros(10, 4), "e5m2")
    assert s == 1 and (q.float() == 0).all()
    q, s = quantize_fp8(torch.zeros(10, 4), "e4m3", axis=1)
    assert torch.equal(s, torch.ones(4))
    x = torch.tensor([1.0, 2.0, float("inf"), float("nan"), -4.0])
    q, s = quantize_fp8(x, "e4m3")
    assert s == 4.0 / 448  # scale from finite values only
    v = dequantize_fp8(q, s, "e4m3")
    assert v[:2].tolist() == [1.0, 2.0] and v[4] == -4.0 and v[2] == 4.0 and torch.isnan(v[3])


def test_input_dtypes_and_noncontiguous(gen):
    x = torch.randn(200, 300, generator=gen)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        xt = x.to(dt).t()  # non-contiguous
        q, s = quantize_fp8(xt, "e4m3", axis=0)
        with reference_only():
            qr, sr = quantize_fp8(xt, "e4m3", axis=0)
        assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)
        assert sqnr_db(xt.float(), dequantize_fp8(q, s, "e4m3", axis=0)) > 28


def test_bad_arguments():
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="format"):
        quantize_fp8(x, "e3m4")
    with pytest.raises(TypeError, match="x"):
        quantize_fp8(x.int(), "e4m3")
    with pytest.raises(ValueError, match="axis"):
        quantize_fp8(x, "e4m3", axis=2)
    with pytest.raises(ValueError, match="scale"):
        quantize_fp8(x, "e4m3", scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        quantize_fp8(x, "e4m3", scale=torch.ones(3), axis=0)
    with pytest.raises(TypeError, match="q"):
        dequantize_fp8(x, 1.0, "e4m3")
    assert get_format("e4m3fn") is FP8_FORMATS["e4m3"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=64), st.sampled_from(FORMATS))
def test_roundtrip_is_nearest_grid_value(values, name):
    """dequant(quant(x)) is a nearest representable value of x / scale (times scale)."""
    x = torch.tensor(values, dtype=torch.float32)
    q, s = quantize_fp8(x, name)
    y = x / s
    grid = fp8_values(name)
    grid = torch.cat([-grid.flip(0), grid])
    best = (y[:, None] - grid[None, :]).abs().min(1).values
    got = (q.float() - y).abs()
    assert torch.all(got <= best * (1 + 1e-6) + 1e-30)
    assert torch.equal(torch.sign(q.float()) * (q.float() != 0), torch.sign(y) * (q.float() != 0))
