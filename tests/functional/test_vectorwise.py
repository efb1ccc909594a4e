"""quantize_vectorwise / dequantize_vectorwise: half-step round trip, zeros, odd shapes, dtypes, NaN/Inf."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbit.functional import dequantize_vectorwise, quantize_vectorwise


def _check_round_trip(x: torch.Tensor, dim: int) -> None:
    q, absmax = quantize_vectorwise(x, dim=dim)
    assert q.dtype == torch.int8 and q.shape == x.shape and absmax.dtype == torch.float32
    ref = x.double()
    expected_absmax = ref.abs().amax(dim=dim)
    torch.testing.assert_close(absmax.double(), expected_absmax, rtol=0, atol=0)
    deq = dequantize_vectorwise(q, absmax, dim=dim).double()
    half_step = (expected_absmax / 254).unsqueeze(dim)
    # half a step per element, plus float32 rounding (u = 2**-24): of the scale absmax / 127 (u x half a step), of
    # x / scale next to a tie (u |x|) and of the product q x scale (u |deq| <= u (|x| + half a step)). The former
    # allowance of 1e-5 half steps failed by chance: x = 1551 with absmax 2794 lies on a tie (70.5 steps), and
    # the float32 product 70 x fl(2794 / 127) = 1539.99988 sits 1.1e-5 half steps beyond it.
    u = 2.0**-24
    assert bool(((deq - ref).abs() <= half_step * (1 + 2 * u) + 2 * u * ref.abs() + 1e-30).all())
    assert int(q.abs().max()) <= 127


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 5, 33), (129,)])
def test_round_trip_half_step(seed, dtype, dim, shape):
    # vectors of very different magnitudes: each must get its own scale
    scales = 10 ** (torch.rand(shape[-1] if dim == 0 else 1) * 6 - 3)
    x = (torch.randn(shape) * scales).to(dtype)
    _check_round_trip(x, dim)


def test_non_contiguous_matches_contiguous(seed):
    x = torch.randn(40, 24)[:, ::2].t()  # (12, 40) non-contiguous
    assert not x.is_contiguous()
    q, a = quantize_vectorwise(x)
    q2, a2 = quantize_vectorwise(x.contiguous())
    assert torch.equal(q, q2) and torch.equal(a, a2)
    _check_round_trip(x, -1)


def test_zero_rows_give_zeros_no_nan(seed):
    x = torch.randn(6, 10)
    x[2] = 0
    q, absmax = quantize_vectorwise(x)
    assert absmax[2] == 0 and bool((q[2] == 0).all())
    deq = dequantize_vectorwise(q, absmax)
    assert torch.isfinite(deq).all() and bool((deq[2] == 0).all())


def test_outlier_and_subnormal_rows(seed):
    x = torch.randn(4, 64)
    x[0, 5] = 1e30  # huge value: its row is coarse, other rows untouched
    x[1] = torch.randn(64) * 1e-40  # subnormal row
    x[3] *= 1e-3
    _check_round_trip(x, -1)
    q, absmax = quantize_vectorwise(x)
    assert q[0, 5] == 127 and bool((q[0, :5] == 0).all())
    assert int(q[1].abs().max()) == 127  # subnormal row keeps full resolution


def test_nan_inf_rows_become_nan_others_untouched(seed):
    x = torch.randn(5, 16)
    clean_q, clean_a = quantize_vectorwise(x)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, 7] = -float("inf")
    q, absmax = quantize_vectorwise(x)
    deq = dequantize_vectorwise(q, absmax)
    for r in (1, 3, 4):
        assert bool(torch.isnan(deq[r]).all()) and bool((q[r] == 0).all())
    assert torch.isnan(absmax[1]) and torch.isinf(absmax[3])
    for r in (0, 2):
        assert torch.equal(q[r], clean_q[r]) and torch.equal(deq[r], dequantize_vectorwise(clean_q, clean_a)[r])


def test_dequantize_dtype_and_errors():
    q, a = quantize_vectorwise(torch.randn(3, 4))
    assert dequantize_vectorwise(q, a, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="x must have dtype"):
        quantize_vectorwise(torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        quantize_vectorwise([1.0, 2.0])
    with pytest.raises(ValueError, match="dim"):
        quantize_vectorwise(torch.randn(3, 4), dim=2)
    with pytest.raises(TypeError, match="dim"):
        quantize_vectorwise(torch.randn(3, 4), dim=1.0)
    with pytest.raises(TypeError, match="q must have dtype"):
        dequantize_vectorwise(q.float(), a)
    with pytest.raises(ValueError, match="absmax must have shape"):
        dequantize_vectorwise(q, a[:2])
    with pytest.raises(TypeError, match="dtype"):
        dequantize_vectorwise(q, a, dtype=torch.int8)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 40),
    scale=st.floats(1e-6, 1e6),
    dim=st.sampled_from([0, -1]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_property_half_step(rows, cols, scale, dim, dtype, data_seed):
    g = torch.Generator().manual_seed(data_seed)
    x = torch.randn(rows, cols, generator=g) * scale
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    _check_round_trip(x.to(dtype), dim)
