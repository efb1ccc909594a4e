"""int8_mm (exact int32), int8_linear (LLM.int8() accuracy, outliers, NaN/Inf, autograd), outlier_columns."""
import pytest
import torch

from eightbit.functional import int8_linear, int8_mm, outlier_columns, quantize_vectorwise
from eightbit.functional.int8 import int8_mm_reference
from eightbit.kernels import reference_only
from tests.numerics import frac_out_of_tol, rel_error, sqnr_db


def _exact(a, b):
    return a.long() @ b.long().T  # int64 ground truth


def _rand_i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize("m", list(range(1, 17)) + [33, 509])
def test_int8_mm_exact_many_m(seed, m):
    a, b = _rand_i8(m, 67), _rand_i8(29, 67)
    out = int8_mm(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), _exact(a, b))


@pytest.mark.parametrize("k", [1, 1023, 1025, 5000])
def test_int8_mm_exact_large_k(seed, k):
    a, b = _rand_i8(5, k), _rand_i8(7, k)
    a[0] = -128  # worst case: |sum| = 128*128*K far beyond 2**24, exact only with chunked accumulation
    b[0] = -128
    b[1] = 127
    exact = _exact(a, b)
    assert int(exact.abs().max()) > 2**24 or k < 1100
    assert torch.equal(int8_mm(a, b).long(), exact)
    with reference_only():
        assert torch.equal(int8_mm(a, b).long(), exact)


def test_int8_mm_non_contiguous_and_empty(seed):
    a = _rand_i8(20, 40)[:, ::2]
    b = _rand_i8(9, 20).t().contiguous().t()
    assert torch.equal(int8_mm(a, b).long(), _exact(a, b))
    assert int8_mm(_rand_i8(0, 20), b).shape == (0, 9)


def test_int8_mm_errors():
    a, b = _rand_i8(3, 4), _rand_i8(5, 4)
    with pytest.raises(TypeError, match="a must have dtype"):
        int8_mm(a.float(), b)
    with pytest.raises(TypeError, match="b must have dtype"):
        int8_mm(a, b.to(torch.uint8))
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        int8_mm([[1]], b)
    with pytest.raises(ValueError, match="b must have 2 dims"):
        int8_mm(a, b[0])
    with pytest.raises(ValueError, match="share K"):
        int8_mm(a, _rand_i8(5, 3))


def test_int8_mm_opcheck(seed):
    a, b = _rand_i8(4, 16), _rand_i8(3, 16)
    torch.library.opcheck(torch.ops.eightbit.int8_mm.default, (a, b))
    x, xa = quantize_vectorwise(torch.randn(4, 16))
    w, wa = quantize_vectorwise(torch.randn(3, 16))
    torch.library.opcheck(torch.ops.eightbit.int8_matmul_dequant.default, (x, xa, w, wa))


# ---------------------------------------------------------------- int8_linear
def _quantized_weight(n, k):
    w = torch.randn(n, k) / k**0.5
    q, a = quantize_vectorwise(w)
    return w, q, a


def _planted(tokens, k, dims, gen_scale=(20.0, 60.0)):
    x = torch.randn(tokens, k)
    lo, hi = gen_scale
    for d in dims:
        x[:, d] = torch.sign(torch.randn(tokens)) * (lo + (hi - lo) * torch.rand(tokens))
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_linear_gaussian(seed, dtype):
    w, q, a = _quantized_weight(96, 512)
    bias = torch.randn(96)
    x = torch.randn(3, 11, 512).to(dtype)
    ref = x.double() @ w.double().T + bias.double()
    y = int8_linear(x, q, a, bias)
    assert y.dtype == dtype and y.shape == (3, 11, 96)
    tol = 0.015 if dtype == torch.float32 else 0.02  # 16-bit output rounding adds ~0.4% (bf16)
    assert rel_error(ref, y) <= tol
    assert sqnr_db(ref, y) >= 33
    assert frac_out_of_tol(ref, y, atol=0.1, rtol=0.05) < 0.01


def test_planted_outliers(seed):
    # wide layer: outliers dominate little of the output energy, so their damage to the row scale shows
    k, dims = 4096, [3, 1000, 2711]
    w, q, a = _quantized_weight(64, k)
    x_plain = torch.randn(32, k)
    x_out = _planted(32, k, dims)
    err = lambda x, t: rel_error(x.double() @ w.double().T, int8_linear(x, q, a, threshold=t))  # noqa: E731
    base = err(x_plain, 6.0)
    with_decomp = err(x_out, 6.0)
    without = err(x_out, 0.0)
    assert base <= 0.015
    assert with_decomp <= 1.5 * base
    assert without >= 5 * base
    assert outlier_columns(x_out, 6.0).tolist() == dims
    assert outlier_columns(x_plain * 0.5, 6.0).numel() == 0  # Gaussian * 0.5 never reaches 6 at this size
    assert outlier_columns(x_out, 0.0).numel() == 0


def test_outlier_columns_any_shape_and_errors(seed):
    x = torch.randn(2, 3, 10) * 0.1
    x[1, 2, 7] = -6.0  # exactly the threshold counts
    x[0, 0, 4] = float("nan")  # NaN is never an outlier
    assert outlier_columns(x, 6.0).tolist() == [7]
    assert outlier_columns(x, 6.0).dtype == torch.long
    with pytest.raises(ValueError, match="threshold"):
        outlier_columns(x, -1.0)
    with pytest.raises(TypeError, match="x must have dtype"):
        outlier_columns(x.to(torch.int32), 6.0)


def test_int8_linear_nan_inf_rows_stay_local(seed):
    w, q, a = _quantized_weight(16, 32)
    x = torch.randn(5, 32)
    clean = int8_linear(x, q, a)
    x[1, 4] = float("nan")
    x[3, 9] = float("inf")
    for t in (6.0, 0.0):
        y = int8_linear(x, q, a, threshold=t)
        assert not torch.isfinite(y[1]).any() and not torch.isfinite(y[3]).any()
        rows = [0, 2, 4]
        if t == 0.0:
            assert torch.equal(y[rows], clean[rows])
        else:  # column 9 became an outlier column (in float): clean rows stay finite and accurate
            assert torch.isfinite(y[rows]).all()
            assert rel_error(x[rows].double() @ w.double().T, y[rows]) < 0.015


def test_int8_linear_fast_path_matches_reference(seed):
    w, q, a = _quantized_weight(200, 300)
    for m in (1, 7, 64):
        x = _planted(m, 300, [5, 17]) if m > 1 else torch.randn(m, 300)
        with reference_only():
            ref = int8_linear(x, q, a)
        fast = int8_linear(x, q, a)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_int8_linear_grad_matches_float_reference(seed):
    w, q, a = _quantized_weight(24, 40)
    w_deq = q.double() * (a.double() / 127).unsqueeze(1)
    bias = torch.randn(24, requires_grad=True)
    x = torch.randn(6, 40, requires_grad=True)
    y = int8_linear(x, q, a, bias)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad.double(), g.double() @ w_deq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias.grad.double(), g.double().sum(0), rtol=1e-5, atol=1e-6)


def test_int8_linear_errors():
    w, q, a = _quantized_weight(4, 8)
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="last dim"):
        int8_linear(torch.randn(2, 7), q, a)
    with pytest.raises(TypeError, match="weight_int8 must have dtype"):
        int8_linear(x, q.float(), a)
    with pytest.raises(ValueError, match="weight_absmax must have shape"):
        int8_linear(x, q, a[:3])
    with pytest.raises(ValueError, match="bias must have shape"):
        int8_linear(x, q, a, torch.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        int8_linear(x, q, a, threshold=-1)
    with pytest.raises(TypeError, match="x must have dtype"):
        int8_linear(x.to(torch.complex64), q, a)
    assert int8_linear(x.double(), q, a).dtype == torch.float64  # a module's .double() keeps working
    with pytest.raises(ValueError, match="weight_absmax is on device meta"):
        int8_linear(x, q, a.to("meta"))
    with pytest.raises(ValueError, match="weight_int8 is on device"):
        int8_linear(x.to("meta"), q, a)
    with pytest.raises(ValueError, match="K >= 1"):
        int8_linear(torch.zeros(2, 0), torch.zeros(3, 0, dtype=torch.int8), torch.ones(3))


def test_reference_int8_mm_is_exact_for_max_k():
    a = torch.full((1, 4096), -128, dtype=torch.int8)
    assert int(int8_mm_reference(a, a)) == 128 * 128 * 4096


def test_outlier_product_sums_in_column_order(seed):
    """Up to SEQUENTIAL_OUTLIER_COLUMNS: float32 terms added one column at a time from zero (the order the native
    kernel reproduces); wider: the BLAS product. Both within float32 rounding of the float64 product."""
    from eightbit.functional.int8 import SEQUENTIAL_OUTLIER_COLUMNS, outlier_product

    gen = torch.Generator().manual_seed(seed)
    for c in (1, 7, SEQUENTIAL_OUTLIER_COLUMNS, SEQUENTIAL_OUTLIER_COLUMNS + 1):
        x, w = torch.randn(9, c, generator=gen) * 30, torch.randn(13, c, generator=gen)
        got = outlier_product(x, w)
        assert got.dtype == torch.float32 and got.shape == (9, 13)
        exact = x.double() @ w.double().T
        bound = c * 2**-23 * (x.double().abs() @ w.double().abs().T)  # c roundings of partial sums <= the abs sum
        assert ((got.double() - exact).abs() <= bound).all(), f"seed {seed}, c={c}"
        if c <= SEQUENTIAL_OUTLIER_COLUMNS:
            want = torch.zeros(9, 13)
            for j in range(c):
                want = want + x[:, j : j + 1] * w[:, j]
            assert torch.equal(got, want)
