"""Affine INT8 (static PTQ path): symmetric/asymmetric round trips, per channel, NaN/Inf, bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbit.functional import dequantize_int8, quantize_int8
from tests.numerics import frac_out_of_tol, sqnr_db


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_roundtrip_error_within_half_step(axis, symmetric, gen):
    x = torch.randn(33, 70, generator=gen) * torch.logspace(-2, 2, 70) + (0 if symmetric else 3.0)
    q, s, zp = quantize_int8(x, axis=axis, symmetric=symmetric)
    assert q.dtype == (torch.int8 if symmetric else torch.uint8)
    if symmetric:
        assert q.min() >= -127 and (zp == 0).all()
    y = dequantize_int8(q, s, zp, axis=axis)
    step = s if axis is None else s.reshape([-1 if d == axis else 1 for d in range(2)])
    assert torch.all((y - x).abs() <= step / 2 * (1 + 1e-5) + 1e-7)
    assert sqnr_db(x, y) > (30 if axis is None else 38)


def test_given_scale_and_zero_point():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 3.0])
    q, s, zp = quantize_int8(x, scale=0.5, zero_point=10, symmetric=False)
    assert q.tolist() == [8, 10, 11, 12, 16] and zp == 10
    assert dequantize_int8(q, s, zp).tolist() == [-1.0, 0.0, 0.5, 1.0, 3.0]
    q, s, zp = quantize_int8(x, scale=0.01)
    assert q.tolist() == [-100, 0, 50, 100, 127]  # saturates at 127


def test_nan_inf_and_zero():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), -2.0])
    q, s, zp = quantize_int8(x)
    assert s == 2.0 / 127  # finite values only
    assert q.tolist() == [64, 0, 127, -127, -127]
    q, s, zp = quantize_int8(x, symmetric=False)
    y = dequantize_int8(q, s, zp)
    assert y[1] == 0.0 and torch.isclose(y[0], torch.tensor(1.0), atol=s.item())
    q, s, zp = quantize_int8(torch.zeros(3, 4), axis=0)
    assert torch.equal(s, torch.ones(3)) and (q == 0).all()


def test_bf16_noncontiguous(gen):
    x = torch.randn(64, 40, generator=gen).bfloat16().t()
    q, s, zp = quantize_int8(x, axis=0)
    y = dequantize_int8(q, s, zp, axis=0)
    assert frac_out_of_tol(x.float(), y, atol=0.02, rtol=0.02) < 0.01


def test_bad_arguments():
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="zero_point"):
        quantize_int8(x, scale=1.0, symmetric=False)
    with pytest.raises(ValueError, match="zero_point"):
        quantize_int8(x, scale=1.0, zero_point=3)
    with pytest.raises(ValueError, match="zero_point"):
        quantize_int8(x, scale=1.0, zero_point=300, symmetric=False)
    with pytest.raises(ValueError, match="scale"):
        quantize_int8(x, scale=-1.0)
    with pytest.raises(TypeError, match="x"):
        quantize_int8([1.0])
    with pytest.raises(TypeError, match="q"):
        dequantize_int8(x, 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=50), st.booleans())
def test_roundtrip_property(values, symmetric):
    x = torch.tensor(values)
    q, s, zp = quantize_int8(x, symmetric=symmetric)
    y = dequantize_int8(q, s, zp)
    assert torch.all((y - x).abs() <= s / 2 * (1 + 1e-4) + 1e-6)
