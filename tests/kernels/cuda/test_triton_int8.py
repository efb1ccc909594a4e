"""Triton LLM.int8() kernels (interpreted, CPU tensors) against the references: the GEMM exact in int32 for
every tile configuration, the activation preparation and the dequantized product bit-identical, and the
LLM.int8() linear bit-identical without outliers and within the derived float32 bound with them; the
``torch._int_mm`` alternative's shape contract under FakeTensorMode."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from eightbit.functional.int8 import int8_linear_reference, int8_matmul_dequant_reference, int8_mm_reference
from eightbit.functional.vectorwise import int8_vectorwise_quant_reference
from eightbit.kernels.cuda import int8 as K
from eightbit.kernels.cuda import int_mm

from .device import back, on

U32 = 2.0**-24  # float32 unit roundoff


def _int8(shape, gen):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)


def _same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("config", list(K.GEMM_CONFIGS))
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 31, 9), (17, 130, 65), (40, 257, 20)])
def test_int8_mm_exact_every_config(gen, config, m, k, n):
    """Every tile configuration is exact for partial tiles in M, N and K (-128 included)."""
    a, b = _int8((m, k), gen), _int8((n, k), gen)
    a[0, 0] = b[0, 0] = -128
    got = back(K._gemm(on(a), on(b), None, None, K.EPI_INT32, config=config))
    assert torch.equal(got, int8_mm_reference(a, b))


def test_int8_mm_extreme_sums(gen):
    """|sum| = K * 128 * 128 (all -128): exact at the largest K tested here."""
    a = torch.full((2, 4096), -128, dtype=torch.int8)
    b = torch.full((3, 4096), -128, dtype=torch.int8)
    assert torch.equal(back(K.int8_mm(on(a), on(b))), torch.full((2, 3), 4096 * 128 * 128, dtype=torch.int32))


def _activations(m, k, gen, dtype):
    x = torch.randn(m, k, generator=gen) * 2
    x[:, k // 3] *= 20  # an outlier column
    if m > 4:
        x[1] = 0.0  # zero row
        x[2, 5 % k] = float("nan")  # NaN row
        x[3, 1 % k] = float("inf")  # Inf row
        x[4] = x[4] * 1e-39  # subnormal absmax: quantized in float64 (per row)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("m,k", [(1, 7), (9, 100), (33, 1500)])
def test_vectorwise_quant_bit_identical(gen, dtype, threshold, m, k):
    x = _activations(m, k, gen, dtype)
    q, absmax, mask = back(K.vectorwise_quant(on(x), threshold))
    q_ref, absmax_ref, mask_ref = int8_vectorwise_quant_reference(x, threshold)
    assert torch.equal(q, q_ref) and _same(absmax, absmax_ref) and torch.equal(mask, mask_ref)


def test_vectorwise_quant_noncontiguous(gen):
    x = torch.randn(40, 30, generator=gen).T  # (30, 40), strides (1, 30)
    got = back(K.vectorwise_quant(on(x), 1.5))
    want = int8_vectorwise_quant_reference(x, 1.5)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("m", [1, 20, 70])
def test_matmul_dequant_bit_identical(gen, m):
    """The epilogue computes (acc * (a/127)) * (b/127) in the reference's order: equal bits."""
    x = _activations(m, 96, gen, torch.float32)
    q, xa, _ = int8_vectorwise_quant_reference(x, 0.0)
    w = _int8((50, 96), gen)
    wa = torch.rand(50, generator=gen) * 3
    assert _same(back(K.int8_matmul_dequant(on(q), on(xa), on(w), on(wa))), int8_matmul_dequant_reference(q, xa, w, wa))


def _weight(n, k, gen):
    w = _int8((n, k), gen).clamp_(-127, 127)
    return w, torch.rand(n, generator=gen) + 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("m", [1, 18, 70])
def test_int8_linear_without_outliers_bit_identical(gen, dtype, m):
    x = (torch.randn(m, 80, generator=gen)).to(dtype)
    w, wa = _weight(24, 80, gen)
    bias = torch.randn(24, generator=gen).to(dtype)
    got = back(K.int8_linear(on(x), on(w), on(wa), on(bias), 6.0 if dtype != torch.float64 else 0.0))
    want = int8_linear_reference(x, w, wa, bias, 6.0 if dtype != torch.float64 else 0.0)
    assert got.dtype == dtype and _same(got, want)
    assert _same(back(K.int8_linear(on(x), on(w), on(wa), None, 0.0)), int8_linear_reference(x, w, wa, None, 0.0))


def _ulp(x, dtype):
    a = x.abs().to(dtype)
    return (torch.nextafter(a, torch.full_like(a, float("inf"))) - a).double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 33])
def test_int8_linear_with_outliers_within_float32_bound(gen, dtype, m):
    """The outlier product (with TF32 off, torch's default) is a float32 matmul summed in another order than the reference's. Bound per element:
    both sums are within gamma_c * sum_j |x_j w_j| of the exact one (c outlier columns, gamma_c = c u / (1 - c u)),
    the two later float32 additions (+ product, + bias) may then round either way (one float32 ulp of the
    result each), and the cast to ``dtype`` one ulp of ``dtype``."""
    k, n = 64, 40
    x = torch.randn(m, k, generator=gen)
    cols = torch.tensor([3, 17, 40])
    x[:, cols] = torch.randn(m, 3, generator=gen) * 30
    x[0, cols] = 30.0  # every outlier column crosses the threshold in row 0
    x = x.to(dtype)
    w, wa = _weight(n, k, gen)
    bias = torch.randn(n, generator=gen).to(dtype)
    got = back(K.int8_linear(on(x), on(w), on(wa), on(bias), 6.0))
    want = int8_linear_reference(x, w, wa, bias, 6.0)
    assert got.dtype == dtype
    w_cols = (w[:, cols].double() * (wa.double().unsqueeze(1) / 127))  # (n, c)
    s = x.double()[:, cols].abs() @ w_cols.abs().T  # (m, n)
    c = len(cols)
    gamma = c * U32 / (1 - c * U32)
    bound = 2 * gamma * s + 2 * _ulp(want.double(), torch.float32) + (_ulp(want.double(), dtype) if dtype != torch.float32 else 0)
    diff = (got.double() - want.double()).abs()
    assert (diff <= bound).all(), float((diff - bound).max())


def test_int8_linear_nan_row_isolated(gen):
    x = torch.randn(5, 40, generator=gen)
    x[2, 7] = float("nan")
    w, wa = _weight(16, 40, gen)
    got = back(K.int8_linear(on(x), on(w), on(wa), None, 6.0))
    assert got[2].isnan().all() and not got[[0, 1, 3, 4]].isnan().any()


def test_int_mm_applies_contract():
    """torch._int_mm's CUDA constraints (M > 16, K and N multiples of 8), checked before any call."""
    a = torch.empty(17, 64, dtype=torch.int8)
    assert int_mm.int_mm_applies(a, torch.empty(32, 64, dtype=torch.int8))
    assert not int_mm.int_mm_applies(torch.empty(16, 64, dtype=torch.int8), torch.empty(32, 64, dtype=torch.int8))
    assert not int_mm.int_mm_applies(torch.empty(17, 60, dtype=torch.int8), torch.empty(32, 60, dtype=torch.int8))
    assert not int_mm.int_mm_applies(a, torch.empty(30, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match="torch._int_mm needs"):
        int_mm.int8_mm(torch.empty(16, 64, dtype=torch.int8), torch.empty(32, 64, dtype=torch.int8))


def test_int_mm_layout_under_fake_tensors():
    """Under FakeTensorMode (no data, no device): the call reaches torch._int_mm with a row-major [M, K] and a
    column-major [K, N] operand and gives int32 [M, N]; shapes the device would reject never get there."""
    with FakeTensorMode():
        a = torch.empty(64, 128, dtype=torch.int8)
        b = torch.empty(256, 128, dtype=torch.int8)
        out = int_mm.int8_mm(a, b)
        assert out.shape == (64, 256) and out.dtype == torch.int32
        assert b.t().stride() == (1, 128)  # the column-major operand cuBLAS takes without a copy
        y = int_mm.int8_matmul_dequant(a, torch.empty(64), b, torch.empty(256))
        assert y.shape == (64, 256) and y.dtype == torch.float32
        with pytest.raises(ValueError):
            int_mm.int8_mm(torch.empty(64, 100, dtype=torch.int8), torch.empty(256, 100, dtype=torch.int8))


@pytest.mark.skipif(not hasattr(torch, "_int_mm"), reason="torch without _int_mm")
def test_int_mm_path_equals_triton_path(gen):
    """Same preparation, same epilogue order: the cuBLAS path's LLM.int8() output equals the Triton path's
    (torch._int_mm also runs on CPU tensors, which is what is compared under the interpreter)."""
    x = torch.randn(24, 64, generator=gen)
    x[:, 5] *= 40
    w, wa = _weight(32, 64, gen)
    bias = torch.randn(32, generator=gen)
    assert torch.equal(back(int_mm.int8_linear(on(x), on(w), on(wa), on(bias), 6.0)),
                       back(K.int8_linear(on(x), on(w), on(wa), on(bias), 6.0)))


def test_gemm_declines_empty_k(gen):
    """K = 0 (which the public checks let through for int8_mm) goes to the reference: zeros, plus the bias."""
    a, b = on(torch.empty(3, 0, dtype=torch.int8)), on(torch.empty(4, 0, dtype=torch.int8))
    assert K.int8_mm(a, b) is NotImplemented
    assert K.int8_matmul_dequant(a, on(torch.ones(3)), b, on(torch.ones(4))) is NotImplemented
    assert K.int8_linear(on(torch.empty(3, 0)), b, on(torch.ones(4)), None, 6.0) is NotImplemented
