"""The native FP8 GEMM (kernels/cpu/csrc/fp8_gemm.c, AVX-512 BF16) against the float64 product of the same codes:
every fp8 format, per-tensor and per-row/per-channel scales, shapes across the 8 x 16 tile and the bfloat16 pair
boundaries, non-finite codes. Runs where the CPU has AVX-512 BF16 (elsewhere fp8_linear is its reference, tested in
tests/functional/test_fp8_linear.py)."""
import pytest
import torch

from eightbit.functional.fp8_linear import fp8_linear_reference
from eightbit.kernels.cpu import native
from eightbit.kernels.cpu.fp8 import _fp8_gemm_available, bf16_table, decode_table, fp8_linear_cpu

U = 2.0**-24
FORMATS = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]


@pytest.fixture(scope="module")
def kernel():
    if not _fp8_gemm_available():
        pytest.skip("this CPU (or build) has no AVX-512 BF16: fp8_linear runs its reference here")
    return fp8_linear_cpu


def _finite_codes(shape, fp8_dtype, gen):
    """Random codes over the whole table, the non-finite ones replaced by zero."""
    q = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    return torch.where(decode_table(fp8_dtype)[q.long()].isfinite(), q, torch.zeros_like(q))


def _bound(xv, wv, sx, sw, bias, k):
    """|float32 result - exact| <= gamma_{K+4} * (sum |x w| |sx sw| + |bias|): K roundings of the sum (the products
    are exact), two of the scale multiplications, one of the bias addition, each at most u of its magnitude."""
    gamma = (k + 4) * U / (1 - (k + 4) * U)
    return gamma * ((xv.abs() @ wv.abs().T) * (sx * sw).abs() + bias.abs())


def test_every_code_is_exact_in_bfloat16():
    for dt in FORMATS:
        t = decode_table(dt)
        back = bf16_table(dt).view(torch.bfloat16).float()
        fin = t.isfinite()
        assert torch.equal(back[fin], t[fin]) and torch.equal(back.isnan(), t.isnan()), dt


@pytest.mark.parametrize("amx", ["1", "0"])  # 16 rows and more run on AMX-BF16 tiles where the CPU has them
@pytest.mark.parametrize("fp8_dtype", FORMATS)
@pytest.mark.parametrize("mkn", [(1, 1, 1), (3, 7, 5), (8, 32, 16), (9, 33, 17), (12, 384, 40), (70, 129, 47),
                                 (16, 32, 16), (40, 1000, 33)])
@pytest.mark.parametrize("per_row", [False, True])
def test_matches_float64_within_derived_bound(kernel, gen, monkeypatch, amx, fp8_dtype, mkn, per_row):
    """Within the derived bound for both GEMMs where the CPU has AMX-BF16 (EIGHTBIT_AMX=0: the vdpbf16ps tile), with
    the AMX path's padding of K to 32 (129, 1000), row tails under 16 (70, 40) and column tails (47, 33)."""
    monkeypatch.setenv("EIGHTBIT_AMX", amx)
    m, k, n = mkn
    xq, wq = _finite_codes((m, k), fp8_dtype, gen), _finite_codes((n, k), fp8_dtype, gen)
    xs = torch.rand(m, generator=gen) + 0.5 if per_row else torch.tensor(0.03)
    ws = torch.rand(n, generator=gen) + 0.5 if per_row else torch.tensor(0.7)
    bias = torch.randn(n, generator=gen)
    got = kernel(xq, xs, wq, ws, bias, fp8_dtype, torch.float32)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    t = decode_table(fp8_dtype).double()
    xv, wv = t[xq.long()], t[wq.long()]
    sx = xs.double().reshape(-1, 1) if per_row else xs.double()
    sw = ws.double() if per_row else ws.double()
    exact = (xv @ wv.T) * sx * sw + bias.double()
    bound = _bound(xv, wv, sx, sw, bias.double(), k)
    for name, out in (("kernel", got), ("reference", fp8_linear_reference(xq, xs, wq, ws, bias, fp8_dtype, torch.float32))):
        excess = ((out.double() - exact).abs() - bound).max().item()
        assert excess <= 0, f"{name}: {fp8_dtype} {mkn} per_row={per_row}: exceeds the bound by {excess:.3g}"


def test_wrong_layout_would_fail(kernel, gen):
    """The bound is tight enough to catch a transposed or shifted panel: permuting the weight's k order moves the
    result far outside it."""
    dt = torch.float8_e4m3fn
    xq, wq = _finite_codes((9, 64, ), dt, gen), _finite_codes((20, 64), dt, gen)
    s = torch.tensor(1.0)
    t = decode_table(dt).double()
    exact = t[xq.long()] @ t[wq.long()].T
    bound = _bound(t[xq.long()], t[wq.long()], s.double(), s.double(), torch.zeros(20, dtype=torch.float64), 64)
    wrong = kernel(xq, s, wq[:, torch.randperm(64, generator=gen)].contiguous(), s, None, dt, torch.float32)
    assert ((wrong.double() - exact).abs() > bound).any()


def test_nan_codes_propagate_and_dtype_cast(kernel, gen):
    dt = torch.float8_e4m3fn
    xq, wq = _finite_codes((5, 40), dt, gen), _finite_codes((18, 40), dt, gen)
    xq[2, 7] = 0x7F  # NaN
    s = torch.tensor(0.5)
    out = kernel(xq, s, wq, s, None, dt, torch.float32)
    ref = fp8_linear_reference(xq, s, wq, s, None, dt, torch.float32)
    assert torch.equal(out.isnan(), ref.isnan()) and out[2].isnan().all() and not out[[0, 1, 3, 4]].isnan().any()
    half = kernel(xq, s, wq, s, None, dt, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half[~out.isnan()], out[~out.isnan()].to(torch.bfloat16))


def test_declines_empty_shapes(kernel):
    s = torch.tensor(1.0)
    assert kernel(torch.zeros(0, 8, dtype=torch.uint8), s, torch.zeros(3, 8, dtype=torch.uint8), s, None,
                  torch.float8_e4m3fn, torch.float32) is NotImplemented


def test_registered_where_supported():
    from eightbit.kernels import registered_kernels

    assert (("fp8_linear", "cpu") in registered_kernels()) == _fp8_gemm_available()
    assert native.library() is None or native.library().eb_fp8_gemm_supported() in (0, 1)
