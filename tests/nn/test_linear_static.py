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
    """Dequantizing the weight in row chunks gives the whole-matrix result up to GEMM summation order.

    BLAS may pick a different kernel (and so a different summation order over K) for a 7-column chunk
    than for all 50 columns, so the fp32 results are compared with the derived bound for two orders of
    the same K-term sum: each is within gamma_K * (|x| @ |W|^T) of the exact value (gamma_K ~ K * u32),
    so they differ by at most 2 * gamma_K of it. In bf16 the outputs are those fp32 values rounded once,
    so they differ by at most one bf16 ulp of the larger magnitude (and are usually equal).
    """
    lin = nn.Linear(64, 50)
    layer = LinearFP8.from_linear(lin, activation="dynamic")
    x = torch.randn(3, 64, generator=gen)
    whole32, whole16 = layer(x), layer(x.bfloat16())
    monkeypatch.setattr(ls, "CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk
    chunk32, chunk16 = layer(x), layer(x.bfloat16())
    xq, w = layer._quantize_input(x).double(), layer._weight_rows(0, 50, torch.float32).double()
    u32 = 2.0**-24
    gamma = 65 * u32 / (1 - 65 * u32)  # 64 products and the bias
    bound = 2 * gamma * (xq.abs() @ w.abs().T + lin.bias.double().abs())
    assert ((chunk32.double() - whole32.double()).abs() <= bound).all()
    assert whole16.dtype == chunk16.dtype == torch.bfloat16
    mag = torch.maximum(whole16.float().abs(), chunk16.float().abs())
    ulp16 = torch.exp2(torch.floor(torch.log2(mag.clamp_min(2.0**-126))) - 7)
    assert ((chunk16.float() - whole16.float()).abs() <= ulp16).all()


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


@pytest.mark.parametrize("make", [
    lambda lin: LinearFP8.from_linear(lin),
    lambda lin: LinearFP8.from_linear(lin, format="e5m2", weight_granularity="tensor"),
    lambda lin: LinearInt8Static.from_linear(lin),
    lambda lin: LinearInt8Static.from_linear(lin, weight_granularity="tensor"),
])
def test_weight_quantized_in_row_chunks_is_exact(make, gen, monkeypatch):
    """set_weight quantizes in row chunks (no full-size temporaries in streaming loads): bit-identical to
    quantizing the whole matrix at once, per-channel and per-tensor, for a transposed (Conv1D) weight too."""
    lin = nn.Linear(48, 61)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(61, 48, generator=gen) * torch.rand(61, 1, generator=gen) * 4)
    whole = make(lin)
    monkeypatch.setattr(ls, "QUANTIZE_CHUNK_ELEMENTS", 48 * 4 + 7)  # 4 rows per chunk, ragged tail
    chunked = make(lin)
    assert torch.equal(chunked.weight.view(torch.uint8), whole.weight.view(torch.uint8))
    assert torch.equal(chunked.weight_scale, whole.weight_scale)
    axis = 0 if whole.weight_granularity == "channel" else None
    ref = whole.weight_spec.quantize(lin.weight.detach(), whole.weight_scale, axis=axis)
    assert torch.equal(chunked.weight.view(torch.uint8), ref.view(torch.uint8))
    transposed = nn.Linear(48, 61)
    with torch.no_grad():
        transposed.weight = nn.Parameter(lin.weight.detach().t().contiguous().t())
    assert not transposed.weight.is_contiguous()
    t_layer = make(transposed)
    assert torch.equal(t_layer.weight.view(torch.uint8), whole.weight.view(torch.uint8))
    assert torch.equal(t_layer.weight_scale, whole.weight_scale)


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_static_runs_the_exact_int8_gemm(granularity, dtype, gen):
    """Symmetric INT8 static: codes(x) @ codes(W)^T summed exactly in int32, times input_scale * weight_scale.

    Against the float64 value of that product (+ bias) the error is the op's float32 rounding only: the
    scales enter as (s * 127) / 127 (two roundings each, |rel| <= 2u, so <= 4u for the pair), the scaling
    of the exact int32 sum takes two more roundings, the bias add one: |out - ref| <= 7u |acc s ws| + u |b| + u|out|
    with u = 2^-24 (acc < 2^24 here, so its float32 conversion is exact). bf16 output: one more rounding."""
    lin = nn.Linear(200, 33)
    x = torch.randn(4, 5, 200, generator=gen)
    x[..., 7] *= 30  # a wide activation range, as real layers have
    layer = _calibrated(LinearInt8Static.from_linear(lin, weight_granularity=granularity), x)
    assert layer._int8_gemm()
    xin = x.to(dtype)
    out = layer(xin)
    assert out.dtype == dtype and out.shape == (4, 5, 33)
    codes = layer.spec.quantize(xin.reshape(-1, 200).float(), layer.input_scale).double()
    acc = codes @ layer.weight.double().T  # exact: |acc| <= 200 * 127^2 < 2^53
    ws = layer.weight_scale.double() if granularity == "channel" else layer.weight_scale.double().expand(33)
    prod = acc * layer.input_scale.double() * ws
    ref = prod + lin.bias.double()
    u = 2.0**-24
    got = out.reshape(-1, 33).double()
    bound = 7 * u * prod.abs() + u * lin.bias.double().abs() + u * got.abs()
    if dtype == torch.bfloat16:
        bound = bound + 2.0**-8 * got.abs()
    assert ((got - ref).abs() <= bound).all(), float(((got - ref).abs() - bound).max())
    # and it is the simulated-quantization result without its float32 summation error: summed exactly, the
    # simulated product differs from ref only by its float32 dequantized operands (one rounding each, 2u + u^2)
    sim = layer._quantize_input(xin.float()).reshape(-1, 200).double() @ layer.dequantized_weight().double().T + lin.bias.double()
    abs_prod = (codes.abs() @ layer.weight.double().abs().T) * layer.input_scale.double() * ws
    assert ((got - sim).abs() <= bound + (2 * u + u * u) * abs_prod).all()


@pytest.mark.parametrize("make", [
    lambda lin: LinearFP8.from_linear(lin),
    lambda lin: LinearFP8.from_linear(lin, format="e5m2", weight_granularity="tensor"),
    lambda lin: LinearFP8.from_linear(lin, activation="dynamic"),
    lambda lin: LinearInt8Static.from_linear(lin),
    lambda lin: LinearInt8Static.from_linear(lin, symmetric=False),
    lambda lin: LinearInt8Static.from_linear(lin, compute_dtype=torch.bfloat16),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_gradient_is_straight_through(make, dtype, gen):
    """An input that requires grad gets ``grad @ dequantized_weight`` (it was silently None: the quantized ops have
    no autograd), the output is the no-grad output bit for bit, and a float layer before the quantized one trains
    through it. The weight and bias are frozen buffers."""
    lin = nn.Linear(48, 24)
    layer = make(lin)
    if layer.activation == "static":
        _calibrated(layer, torch.randn(16, 48, generator=gen))
    x = torch.randn(3, 5, 48, generator=gen).to(dtype).requires_grad_(True)
    g = torch.randn(3, 5, 24, generator=gen).to(dtype)
    y = layer(x)
    with torch.no_grad():
        assert torch.equal(y, layer(x))
    y.backward(g)
    want = g @ layer.dequantized_weight().to(dtype)
    assert x.grad is not None and x.grad.dtype == dtype and torch.equal(x.grad, want)
    assert not any(p.requires_grad for p in layer.parameters())

    head = nn.Linear(8, 48).to(dtype)
    model = nn.Sequential(head, layer)
    model(torch.randn(4, 8, generator=gen).to(dtype)).square().sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [LinearFP8.from_linear, LinearInt8Static.from_linear])
def test_non_float_inputs_and_non_finite_weights_are_refused(make, gen):
    """Integer, complex and float8 inputs raise TypeError naming x (they were cast silently: an int64 input gave
    zeros); a weight holding NaN or Inf raises ValueError (NaN became 0 and Inf the top code, a plausible finite
    output)."""
    import eightbit

    layer = make(nn.Linear(8, 4))
    eightbit.calibrate(layer, [torch.randn(16, 8, generator=gen)], progress=False)
    for bad in (torch.randint(-3, 4, (2, 8)), torch.randn(2, 8, dtype=torch.complex64),
                torch.randn(2, 8).to(torch.float8_e4m3fn)):
        with pytest.raises(TypeError, match="x must have dtype"):
            layer(bad)
    assert layer(torch.randn(2, 8, dtype=torch.float64)).shape == (2, 4)
    for v in (float("nan"), float("inf")):
        lin = nn.Linear(8, 4)
        with torch.no_grad():
            lin.weight[1, 2] = v
        with pytest.raises(ValueError, match="NaN or Inf"):
            make(lin)


def test_checkpoint_of_another_format_is_refused(gen):
    """torch's loader would cast codes of another dtype silently (FP8 bit patterns read as int8 numbers, E5M2 as
    E4M3): such a checkpoint raises, naming the entry, and the layer keeps its weight."""
    lin = nn.Linear(32, 16)
    x = torch.randn(10, 32, generator=gen)
    layers = {"int8": _calibrated(LinearInt8Static.from_linear(lin), x), "e4m3": _calibrated(LinearFP8.from_linear(lin), x),
              "e5m2": _calibrated(LinearFP8.from_linear(lin, format="e5m2"), x)}
    for src, dst in (("e4m3", "int8"), ("int8", "e4m3"), ("e5m2", "e4m3")):
        target = layers[dst]
        before = target.weight.clone()
        with pytest.raises(RuntimeError, match="weight: codes of dtype"):
            target.load_state_dict(layers[src].state_dict())
        assert torch.equal(target.weight.view(torch.uint8), before.view(torch.uint8))
    fresh = LinearFP8.from_linear(nn.Linear(32, 16), format="e5m2")
    fresh.load_state_dict(layers["e5m2"].state_dict())  # the same format loads
    assert torch.equal(fresh(x), layers["e5m2"](x))


@pytest.mark.parametrize("cls", [LinearFP8, LinearInt8Static])
def test_constructor_arguments_are_checked(cls):
    for bad in (16.7, 0, -3, True, "16"):
        with pytest.raises(ValueError, match="in_features"):
            cls(bad, 4)
        with pytest.raises(ValueError, match="out_features"):
            cls(4, bad)
    with pytest.raises(TypeError, match="bias"):
        cls(4, 4, bias="no")
    import numpy as np
    assert cls(np.int64(4), 3).in_features == 4
    if cls is LinearInt8Static:
        with pytest.raises(TypeError, match="symmetric"):
            cls(4, 4, symmetric="no")
