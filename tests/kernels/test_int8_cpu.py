"""CPU int8 kernels against the plain-PyTorch references, including worst-case (saturating) int8 values."""
import pytest
import torch

from eightbit.functional.int8 import int8_matmul_dequant_reference, int8_mm_reference
from eightbit.kernels import get_kernel, reference_only, registered_kernels
from eightbit.kernels import int8_cpu


def _worst_case(m, n, k):
    """Random int8 plus rows/cols at the extremes (+127 against +127, -128 against -128): the inputs that
    saturate oneDNN's int16 pair sums on AVX2 unless activations are sign-split."""
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    a[0], b[0] = 127, 127
    if m > 1:
        a[1] = -128
    if n > 1:
        b[1] = -128
    return a, b


def test_kernels_registered_and_forced_reference():
    assert ("int8_mm", "cpu") in registered_kernels()
    assert get_kernel("int8_mm", "cpu") is int8_cpu.int8_mm_cpu
    with reference_only():
        assert get_kernel("int8_mm", "cpu") is None


@pytest.mark.parametrize("m,n,k", [(1, 5, 3), (16, 33, 1024), (17, 8, 1025), (40, 31, 2500)])
def test_int8_mm_cpu_exact(seed, m, n, k):
    a, b = _worst_case(m, n, k)
    assert torch.equal(int8_cpu.int8_mm_cpu(a, b), int8_mm_reference(a, b))


@pytest.mark.parametrize("m", [1, 2, 31, 130])
def test_matmul_dequant_kernels_vs_reference(seed, m):
    n, k = 48, 300
    a, b = _worst_case(m, n, k)
    xa, wa = torch.rand(m) * 3 + 0.1, torch.rand(n) * 3 + 0.1
    ref = int8_matmul_dequant_reference(a, xa, b, wa)
    torch.testing.assert_close(int8_cpu.int8_matmul_dequant_cpu(a, xa, b, wa), ref, rtol=1e-6, atol=1e-5)
    if ("int8_prepack", "cpu") not in registered_kernels():
        pytest.skip("oneDNN qlinear ops unavailable in this torch build")
    packed = int8_cpu.prepack_int8_cpu(b)
    got = int8_cpu.int8_matmul_dequant_packed_cpu(a, xa, packed, wa)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    # integer part bit-exact: unit scales give the int32 products themselves (|acc| < 2**24 here)
    exact = int8_cpu.int8_matmul_dequant_packed_cpu(a, torch.full((m,), 127.0), packed, torch.full((n,), 127.0))
    assert torch.equal(exact.double(), int8_mm_reference(a, b).double())


def test_packed_kernel_non_finite_scales_stay_in_their_row(seed):
    if ("int8_prepack", "cpu") not in registered_kernels():
        pytest.skip("oneDNN qlinear ops unavailable in this torch build")
    a, b = _worst_case(4, 6, 20)
    a[2] = 0
    xa = torch.tensor([1.0, 2.0, float("nan"), 3.0])
    out = int8_cpu.int8_matmul_dequant_packed_cpu(a, xa, int8_cpu.prepack_int8_cpu(b), torch.ones(6))
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
