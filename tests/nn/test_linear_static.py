"""LinearFP8 / LinearInt8Static: accuracy vs float64, calibration, state_dict round trip, chunking."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import eightbit.nn.linear_static as ls
from eightbit.nn import LinearFP8, LinearInt8Static
from eightbit.nn.base import QuantizedLinear
from tests.numerics import sqnr_db


def _calibrated(layer, x):
    layer.start_observing()
    layer(x)
    assert layer.finish_observing()
    return layer


@pytest.mark.parametrize("make,floor", [
    (lambda lin: LinearFP8.from_linear(lin), 24),
    (lambda lin: LinearFP8.from_linear(lin, format="e5m2"), 17),
    (lambda lin: LinearFP8.from_linear(lin, activation="dynamic"), 24),
    (lambda lin: LinearInt8Static.from_linear(lin), 30),
    (lambda lin: LinearInt8Static.from_linear(lin, symmetric=False, weight_granularity="tensor"), 28),
])
def test_accuracy_vs_float64(make, floor, gen):
    lin = nn.Linear(96, 40)
    x = torch.randn(5, 7, 96, generator=gen)
    layer = make(lin)
    assert isinstance(layer, QuantizedLinear)
    if layer.needs_calibration:
        with pytest.raises(RuntimeError, match="calibrate"):
            layer(x)
        _calibrated(layer, x)
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    out = layer(x)
    assert out.shape == (5, 7, 40) and out.dtype == torch.float32
    assert sqnr_db(ref, out) > floor
    assert layer.weight.element_size() == 1


def test_state_dict_roundtrip_into_fresh_module(gen):
    lin = nn.Linear(32, 16)
    x = torch.randn(10, 32, generator=gen)
    for cls, opts in ((LinearFP8, {"format": "e4m3fnuz", "calibration": "entropy"}), (LinearInt8Static, {"symmetric": False})):
        layer = _calibrated(cls.from_linear(lin, **opts), x)
        fresh = cls.from_linear(nn.Linear(32, 16), **opts)
        fresh.load_state_dict(layer.state_dict(), strict=True)
        assert torch.equal(fresh(x), layer(x))
        assert bool(fresh.calibrated)


def test_chunked_weight_dequant_matches(gen, monkeypatch):
    lin = nn.Linear(64, 50)
    x = torch.randn(3, 64, generator=gen).bfloat16()
    layer = LinearFP8.from_linear(lin, activation="dynamic")
    whole = layer(x)
    monkeypatch.setattr(ls, "CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk
    assert whole.dtype == torch.bfloat16 and torch.equal(layer(x), whole)


def test_bad_options():
    lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="weight_granularity"):
        LinearFP8.from_linear(lin, weight_granularity="row")
    with pytest.raises(ValueError, match="activation"):
        LinearInt8Static.from_linear(lin, activation="dynamic")
    with pytest.raises(ValueError, match="format"):
        LinearFP8.from_linear(lin, format="e2m5")
    with pytest.raises(RuntimeError, match="dynamic"):
        LinearFP8.from_linear(lin, activation="dynamic").start_observing()
    with pytest.raises(ValueError, match="last dim"):
        LinearFP8.from_linear(lin, activation="dynamic")(torch.randn(2, 5))
