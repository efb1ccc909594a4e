"""CPU int8 kernels against the plain-PyTorch references, including worst-case int8 values (the -128 code)."""
import pytest
import torch

from eightbit.functional.int8 import int8_matmul_dequant_reference, int8_mm_reference
from eightbit.functional import ops
from eightbit.kernels import reference_only, registered_kernels
from eightbit.kernels.cpu import int8 as int8_cpu


def _worst_case(m, n, k):
    """Random int8 plus rows/cols at the extremes (+127 against +127, -128 against -128)."""
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    a[0], b[0] = 127, 127
    if m > 1:
        a[1] = -128
    if n > 1:
        b[1] = -128
    return a, b


def test_kernels_registered_and_forced_reference(monkeypatch):
    assert ("int8_mm", "cpu") in registered_kernels()
    calls = []
    reference = ops.REFERENCES["int8_mm"]
    monkeypatch.setitem(ops.REFERENCES, "int8_mm", lambda *a: calls.append(1) or reference(*a))
    a, b = _worst_case(3, 4, 5)
    assert torch.equal(torch.ops.eightbit.int8_mm(a, b), int8_mm_reference(a, b))
    assert calls == []  # the kernel served it
    with reference_only():
        assert torch.equal(torch.ops.eightbit.int8_mm(a, b), int8_mm_reference(a, b))
    assert calls == [1]
    monkeypatch.setenv("EIGHTBIT_REFERENCE", "1")
    torch.ops.eightbit.int8_mm(a, b)
    assert calls == [1, 1]


@pytest.mark.parametrize("m,n,k", [(1, 5, 3), (16, 33, 1024), (17, 8, 1025), (40, 31, 2500)])
def test_int8_mm_cpu_exact(seed, m, n, k):
    a, b = _worst_case(m, n, k)
    assert torch.equal(int8_cpu.int8_mm_cpu(a, b), int8_mm_reference(a, b))


@pytest.mark.parametrize("m", [1, 2, 31, 130])
def test_matmul_dequant_kernel_vs_reference(seed, m):
    n, k = 48, 300
    a, b = _worst_case(m, n, k)
    xa, wa = torch.rand(m) * 3 + 0.1, torch.rand(n) * 3 + 0.1
    ref = int8_matmul_dequant_reference(a, xa, b, wa)
    torch.testing.assert_close(int8_cpu.int8_matmul_dequant_cpu(a, xa, b, wa), ref, rtol=1e-6, atol=1e-5)
    a[a == -128] = -127  # the native GEMM's range
    ref = int8_matmul_dequant_reference(a, xa, b, wa)
    torch.testing.assert_close(int8_cpu.int8_matmul_dequant_cpu(a, xa, b, wa), ref, rtol=1e-6, atol=1e-5)


def test_non_finite_scales_stay_in_their_row(seed):
    a, b = _worst_case(4, 6, 20)
    a[a == -128] = -127
    a[2] = 0
    xa = torch.tensor([1.0, 2.0, float("nan"), 3.0])
    out = int8_cpu.int8_matmul_dequant_cpu(a, xa, b, torch.ones(6))
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()


# the row tiles (every remainder of 4 rows) and the panel tile (M >= 160 at this K on AVX-512 VNNI, M >= 16 on AVX2)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 256])
def test_matmul_dequant_exact_at_the_int32_limit(m):
    """K = MAX_K with every product at +-127 * 128: the sums reach -2.13e9, inside int32 but beyond it for the
    VNNI tile's unsigned form (x + 128: -4.28e9), which wraps and must come back exactly. Unit scales
    (absmax 127) make the float32 output the int32 sum rounded once, as in the reference."""
    from eightbit.functional.int8 import MAX_K

    x = torch.full((m, MAX_K), 127, dtype=torch.int8)
    x[0, ::3] = -127
    w = torch.full((17, MAX_K), -128, dtype=torch.int8)
    w[3], w[4, ::2] = 127, 127
    xa, wa = torch.full((m,), 127.0), torch.full((17,), 127.0)
    got = ops.int8_matmul_dequant(x, xa, w, wa)
    assert torch.equal(got, int8_matmul_dequant_reference(x, xa, w, wa))


def test_matmul_dequant_with_empty_k_is_zero():
    """K = 0: no products, an all-zero float32 [M, N] (the native path is skipped: it has nothing to multiply)."""
    x, w = torch.zeros((3, 0), dtype=torch.int8), torch.zeros((5, 0), dtype=torch.int8)
    got = int8_cpu.int8_matmul_dequant_cpu(x, torch.ones(3), w, torch.ones(5))
    assert got.dtype == torch.float32 and torch.equal(got, torch.zeros(3, 5))


def _amx_usable() -> bool:
    from eightbit.kernels.cpu import native
    lib = native.library()
    return lib is not None and bool(lib.eb_amx_usable())


@pytest.mark.skipif(not _amx_usable(), reason="this CPU (or build) has no AMX-INT8: the VNNI/AVX2 nests run")
@pytest.mark.parametrize("m", [16, 17, 40, 64, 131])
@pytest.mark.parametrize("k,n", [(64, 16), (384, 1536), (100, 33), (257, 45), (1025, 20), (128, 40), (256, 33)])
def test_amx_panels_equal_the_reference_and_the_vnni_nest(monkeypatch, gen, m, k, n):
    """Where the CPU has AMX-INT8 the panel nest runs on tiles: the full LLM.int8() forward (outlier columns, bias)
    and the dequantizing product are bit-identical to the reference and to the VNNI nest (EIGHTBIT_AMX=0), for
    row counts with and without a tail of rows under 16, K padded to 64 (100, 257, 1025: a zero-padded copy of x)
    and panels of fewer than 16 columns (the scalar epilogue). Up to 64 rows with K a multiple of 64 take the nest
    with the roles swapped (weight rows as the A tile, 1 to 4 blocks of 16 activation rows, a last block of weight
    rows under 16: N = 40, 33)."""
    from eightbit.functional import quantize_vectorwise
    from eightbit.functional.int8 import int8_linear_reference

    w, wa = quantize_vectorwise(torch.randn(n, k, generator=gen))
    x = torch.randn(m, k, generator=gen)
    x[:, [1, k // 2]] *= 20.0  # two outlier columns at threshold 6
    bias = torch.randn(n, generator=gen)
    xi = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    xs = torch.rand(m, generator=gen) + 0.1
    results = []
    for amx in ("1", "0"):
        monkeypatch.setenv("EIGHTBIT_AMX", amx)
        results.append((ops.int8_linear(x, w, wa, bias, 6.0), ops.int8_linear(x, w, wa, None, 0.0),
                        int8_cpu.int8_matmul_dequant_cpu(xi, xs, w, wa)))
    want = (int8_linear_reference(x, w, wa, bias, 6.0), int8_linear_reference(x, w, wa, None, 0.0),
            int8_matmul_dequant_reference(xi, xs, w, wa))
    for got in results:
        for g, r in zip(got, want):
            assert torch.equal(g, r)
