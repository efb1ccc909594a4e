"""fp8_linear (the FP8 product on codes) against a float64 reference, its argument checks, and LinearFP8's
forward through it equal to the former fake-quantize + F.linear formula."""
import pytest
import torch
import torch.nn.functional as F

from eightbit.functional.fp8 import quantize_fp8
from eightbit.functional.fp8_linear import fp8_linear
from eightbit.kernels import reference_only
from eightbit.nn import LinearFP8

U = 2.0**-24


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
@pytest.mark.parametrize("per_row", [False, True])
def test_matches_float64_within_derived_bound(gen, fmt, dtype, per_row):
    """float32 result vs the float64 product of the same codes and scales: each dequantized operand is one
    float32 rounding off (u each), the K-term sum within gamma_K, plus the bias addition (u of the result)."""
    m, k, n = 7, 96, 40
    x, w = torch.randn(m, k, generator=gen) * 3, torch.randn(n, k, generator=gen)
    xq, xs = quantize_fp8(x, fmt, axis=0 if per_row else None)
    wq, ws = quantize_fp8(w, fmt, axis=0)
    bias = torch.randn(n, generator=gen)
    got = fp8_linear(xq, xs, wq, ws, bias, fp8_dtype=dtype)
    xd = xq.double() * (xs.double().reshape(-1, 1) if xs.dim() else xs.double())
    wd = wq.double() * ws.double().reshape(-1, 1)
    want = xd @ wd.T + bias.double()
    gamma = k * U / (1 - k * U)
    bound = (gamma + 2 * U + U * U) * (xd.abs() @ wd.abs().T) + U * want.abs() * 2
    diff = (got.double() - want).abs()
    assert got.dtype == torch.float32 and (diff <= bound).all(), float((diff - bound).max())


def test_bad_arguments():
    q = torch.zeros(2, 8, dtype=torch.uint8)
    s = torch.tensor(1.0)
    with pytest.raises(ValueError, match="fp8_dtype"):
        fp8_linear(q, s, q, s, fp8_dtype=torch.int8)
    with pytest.raises(ValueError, match="share K"):
        fp8_linear(q, s, torch.zeros(3, 9, dtype=torch.uint8), s)
    with pytest.raises(ValueError, match="x_scale"):
        fp8_linear(q, torch.ones(3), q, s)
    with pytest.raises(TypeError, match="w_scale"):
        fp8_linear(q, s, q, torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias"):
        fp8_linear(q, s, q, s, torch.zeros(5))
    with pytest.raises(ValueError, match="dtype"):
        fp8_linear(q, s, q, s, dtype=torch.int32)


@pytest.mark.parametrize("activation", ["static", "dynamic"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_fp8_equals_the_former_formula(gen, activation, granularity, dtype):
    """LinearFP8 through fp8_linear's reference gives the bits of the formula it replaced: fake-quantized input,
    weight dequantized in the compute dtype, F.linear, cast back. A native FP8 GEMM (AVX-512 BF16 CPUs) sums the
    same exact products in its own order: within the float32 rounding bound of the formula."""
    torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
    q = LinearFP8.from_linear(torch.nn.Linear(96, 70), activation=activation, weight_granularity=granularity)
    if activation == "static":
        q.input_scale.fill_(0.01)
        q.calibrated.fill_(True)
    x = (torch.randn(3, 5, 96, generator=gen) * 2).to(dtype)
    if activation == "static":
        xq = q.spec.fake_quantize(x, q.input_scale, q.input_zero_point, dtype=q.compute_dtype)
    else:
        xq = q._quantize_input(x)
    w = q._weight_rows(0, 70, q.compute_dtype)
    old = F.linear(xq, w, q.bias.to(q.compute_dtype)).to(dtype)
    with reference_only():
        assert torch.equal(q(x), old)
    if dtype == torch.float32:  # the kernel, where one serves fp8_linear: both within gamma_{K+4} of exact
        magnitude = xq.double().abs() @ w.double().abs().T + q.bias.double().abs()
        gamma = (96 + 4) * U / (1 - (96 + 4) * U)
        assert ((q(x).double() - old.double()).abs() <= 2 * gamma * magnitude).all()


def test_static_scale_rechecked_after_a_change():
    """The scale is checked once per value, and again after any in-place write (a loaded or edited bad scale
    raises instead of saturating every input)."""
    q = LinearFP8.from_linear(torch.nn.Linear(16, 8), activation="static")
    q.input_scale.fill_(0.01)
    q.calibrated.fill_(True)
    q(torch.randn(2, 16))
    q.input_scale.fill_(0.0)
    with pytest.raises(ValueError, match="input_scale"):
        q(torch.randn(2, 16))
