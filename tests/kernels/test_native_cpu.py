"""Native CPU kernels (kernels/csrc/*.c) against the plain-PyTorch references: block-wise
quantize/dequantize bit-identical, stochastic rounding bit-identical and unbiased, the fused 8-bit Adam
update bit-identical in its states (parameters within an ulp of the step: torch's vectorized sqrt is
not correctly rounded, C's sqrtf is), thread splits that do not change results, and the fallback when no compiler works."""
import shutil

import pytest
import torch

import eightbit.optim as O
from eightbit.functional import create_dynamic_map, create_linear_map
from eightbit.functional.blockwise import code_midpoints, quantize_blocks
from eightbit.functional.rounding import step_seed, stochastic_round, uniform_from_index
from eightbit.kernels import native_cpu, reference_only
from eightbit.kernels.blockwise_cpu import build_lut, native_dequantize, native_quantize

CODES = {
    "dynamic-signed": lambda: create_dynamic_map(signed=True),
    "dynamic-unsigned": lambda: create_dynamic_map(signed=False),
    "linear": lambda: create_linear_map(signed=True),
}


@pytest.fixture(scope="module")
def lib():
    lib = native_cpu.library()
    if lib is None and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert lib is not None, "a C compiler exists but the native kernels did not build"
    return lib


def _hostile(n: int, gen: torch.Generator, *, nonneg: bool) -> torch.Tensor:
    x = torch.randn(n, generator=gen) * torch.logspace(-30, 30, n).roll(int(torch.randint(n, (1,), generator=gen)))
    x[::97] = 0.0
    x[5::211] = -0.0
    x[7::301] = 1e-45  # subnormal
    x[11::401] = torch.finfo(torch.float32).max
    return x.abs() if nonneg else x


def _reference_stochastic(x2d, code, seed, first):
    """Reference SR quantization built from the functional pieces (bucketize + stochastic_round)."""
    mid, zero_idx = code_midpoints(code)
    q_near, absmax = quantize_blocks(x2d, code, mid, zero_idx)
    scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax)).unsqueeze(1)
    n = x2d / scale
    index = first + torch.arange(x2d.numel(), dtype=torch.int64).view(x2d.shape)
    idx = stochastic_round(n, q_near.int(), code, uniform_from_index(index, seed))
    ok = torch.isfinite(absmax).unsqueeze(1)
    return torch.where(ok, idx, q_near.int()).to(torch.uint8), absmax


@pytest.mark.parametrize("code_name", list(CODES))
@pytest.mark.parametrize("bs", [64, 256, 2048, 4096])
def test_quantize_dequantize_bit_identical(lib, gen, code_name, bs):
    code = CODES[code_name]()
    mid, zero_idx = code_midpoints(code)
    x = _hostile(bs * 13, gen, nonneg=code_name.endswith("unsigned")).view(13, bs)
    x[3, 5] = float("nan")
    x[8, 0] = float("-inf")
    q, absmax = native_quantize(x, code, build_lut(mid), zero_idx)
    q_ref, absmax_ref = quantize_blocks(x, code, mid, zero_idx)
    assert torch.equal(q, q_ref)
    assert torch.equal(absmax.isnan(), absmax_ref.isnan())
    assert torch.equal(absmax.nan_to_num(), absmax_ref.nan_to_num())
    y = native_dequantize(q, absmax, code)
    y_ref = code[q.long()] * absmax.unsqueeze(1)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
    assert y[3].isnan().all() and y[8].isnan().all() and not y[[0, 1, 2]].isnan().any()


@pytest.mark.parametrize("code_name", list(CODES))
def test_stochastic_rounding_bit_identical_and_unbiased(lib, gen, code_name):
    code = CODES[code_name]()
    mid, zero_idx = code_midpoints(code)
    x = _hostile(2048 * 9, gen, nonneg=code_name.endswith("unsigned")).view(9, 2048)
    seed, first = int(torch.randint(2**31 - 1, (1,), generator=gen)), 2**33 + 12345  # index wraps past 2^31
    q, absmax = native_quantize(x, code, build_lut(mid), zero_idx, seed=seed, first=first)
    q_ref, absmax_ref = _reference_stochastic(x, code, seed, first)
    assert torch.equal(q, q_ref) and torch.equal(absmax, absmax_ref)
    # unbiased: the mean over many seeds of the dequantized value approaches x (RTN stays biased)
    x1 = torch.rand(1, 2048, generator=gen) * 0.01 + 0.5  # inside one code interval of every map
    x1[0, 0] = 1.0  # pins absmax
    draws = torch.stack([  # seeds as the optimizers make them: a hash of (step, state)
        native_dequantize(native_quantize(x1, code, build_lut(mid), zero_idx, seed=step_seed(s, 1))[0],
                          torch.ones(1), code)
        for s in range(200)
    ])
    err_sr = (draws.mean(0) - x1).abs()[0, 1:].mean()
    q_rtn, _ = native_quantize(x1, code, build_lut(mid), zero_idx)
    err_rtn = (code[q_rtn.long()] - x1).abs()[0, 1:].mean()
    assert err_sr < 0.25 * err_rtn, (err_sr, err_rtn)


def test_stochastic_rounding_keeps_exact_codes(lib):
    code = create_dynamic_map(signed=False)
    mid, zero_idx = code_midpoints(code)
    x = code.repeat(8).view(8, 256)  # every value is a code; absmax 1
    for seed in range(5):
        q, _ = native_quantize(x.contiguous(), code, build_lut(mid), zero_idx, seed=seed)
        assert torch.equal(q.long(), torch.arange(256).repeat(8, 1))


@pytest.mark.parametrize("kw", [{}, {"stochastic_rounding": False}, {"percentile_clipping": 90}, {"weight_decay": 0.0}])
@pytest.mark.parametrize("cls", [O.AdamW8bit, O.Adam8bit])
def test_adam_native_matches_reference(lib, gen, cls, kw):
    n = 2048 * 20 + 77  # native full blocks + eager partial block
    p1 = torch.nn.Parameter(torch.randn(n, generator=gen))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = cls([p1], 1e-3, **kw), cls([p2], 1e-3, **kw)
    if cls is O.Adam8bit and "weight_decay" not in kw:
        for o in (o1, o2):
            o.param_groups[0]["weight_decay"] = 0.01  # exercise L2 mode too
    for step in range(6):
        g = torch.randn(n, generator=gen)
        g[100:300] *= 1e4  # outliers in one block
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        with reference_only():
            o2.step()
    for k, v in o1.state[p1].items():
        assert torch.equal(v, o2.state[p2][k]), k
    # each step lr * d may differ by an ulp of d (sqrt rounding): <= 1e-7 absolute after 6 steps of ~1e-3,
    # while a wrong update would be off by ~1e-4
    torch.testing.assert_close(p1.detach(), p2.detach(), rtol=1e-6, atol=1e-7)


def test_adam_native_thread_split_is_deterministic(lib, gen):
    n = 2048 * 64
    g = torch.randn(n, generator=gen)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            p = torch.nn.Parameter(torch.linspace(-1, 1, n))
            opt = O.AdamW8bit([p], 1e-3)
            for _ in range(3):
                p.grad = g.clone()
                opt.step()
            results.append((p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


def test_adam_native_nan_block_isolated(lib, gen):
    n = 2048 * 16
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    opt = O.AdamW8bit([p], 1e-3, nonfinite="propagate")
    p.grad = torch.randn(n, generator=gen)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.randn(n, generator=gen)
    p.grad[2048 * 5 + 7] = float("nan")
    opt.step()
    am = opt.state[p]["exp_avg_absmax"]
    assert am[5].isnan() and not am[torch.arange(16) != 5].isnan().any()
    assert torch.isfinite(p.detach()[: 2048 * 5]).all() and torch.isfinite(p.detach()[2048 * 6:]).all()
    assert not torch.equal(before["exp_avg"][:2048], opt.state[p]["exp_avg"][:2048])  # other blocks did step


def test_fallback_when_build_fails(monkeypatch, gen):
    monkeypatch.setattr(native_cpu, "_compiler", lambda: "/nonexistent/cc")
    monkeypatch.setenv("EIGHTBIT_CACHE_DIR", "/nonexistent-dir/eightbit")
    native_cpu.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
            assert native_cpu.library() is None
        p = torch.nn.Parameter(torch.randn(2048 * 10, generator=gen))
        p.grad = torch.randn_like(p)
        O.AdamW8bit([p], 1e-3).step()  # falls back to the compiled / eager path
        assert torch.isfinite(p.detach()).all()
    finally:
        native_cpu.library.cache_clear()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("EIGHTBIT_NATIVE", "0")
    native_cpu.library.cache_clear()
    try:
        assert native_cpu.library() is None
    finally:
        monkeypatch.delenv("EIGHTBIT_NATIVE")
        native_cpu.library.cache_clear()


@pytest.mark.parametrize("m", [1, 3, 4, 5, 16, 70])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 1000, 4099])
def test_int8_kernel_exact(lib, gen, m, k):
    from eightbit.functional.int8 import int8_matmul_dequant_reference
    from eightbit.kernels.int8_cpu import int8_matmul_dequant_outliers_cpu

    n = 37
    x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    x[0, :] = 127  # worst cases for the int16 pair sums: extremes of both signs
    w[0, :] = -128
    w[1, :] = 127
    if m > 1:
        x[1, :] = -127
    xa = torch.rand(m, generator=gen) * 10
    wa = torch.rand(n, generator=gen) * 10
    got = int8_matmul_dequant_outliers_cpu(x, xa, w, wa)
    want = int8_matmul_dequant_reference(x, xa, w, wa)
    exact = (x.double() @ w.double().T) * (xa.double().unsqueeze(1) / 127) * (wa.double().unsqueeze(0) / 127)
    assert got.shape == (m, n)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


def test_int8_kernel_declines_k_beyond_exact_range(lib):
    from eightbit.kernels.int8_cpu import _NATIVE_MAX_K, int8_matmul_dequant_outliers_cpu

    k = _NATIVE_MAX_K + 1
    x, w = torch.zeros(1, k, dtype=torch.int8), torch.zeros(2, k, dtype=torch.int8)
    assert int8_matmul_dequant_outliers_cpu(x, torch.ones(1), w, torch.ones(2)) is None


def test_int8_kernel_noncontiguous(lib, gen):
    from eightbit.functional.int8 import int8_matmul_dequant_reference
    from eightbit.kernels.int8_cpu import int8_matmul_dequant_outliers_cpu

    x = torch.randint(-127, 128, (130, 3), dtype=torch.int8, generator=gen).T  # (3, 130) strided
    w = torch.randint(-128, 128, (130, 50), dtype=torch.int8, generator=gen).T  # (50, 130) strided
    xa, wa = torch.rand(3, generator=gen), torch.rand(50, generator=gen)
    torch.testing.assert_close(int8_matmul_dequant_outliers_cpu(x, xa, w, wa),
                               int8_matmul_dequant_reference(x, xa, w, wa), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz"])
@pytest.mark.parametrize("saturate", [True, False])
def test_fp8_native_casts_bit_identical(lib, gen, name, saturate):
    from eightbit.functional import FP8_FORMATS
    from eightbit.functional.fp8 import _cast_reference
    from eightbit.kernels.fp8_cpu import dequantize_fp8_cpu, quantize_fp8_cpu

    f = FP8_FORMATS[name]
    kw = dict(man_bits=f.man_bits, bias=f.bias, max_code=f.max_code, nan_code=f.nan_code,
              overflow_code=f.overflow_code, saturate=saturate, fnuz=f.fnuz, force=True)
    x = _hostile(3 * 65536 + 5, gen, nonneg=False)  # crosses the per-thread work units
    x[::1009] = float("nan")
    x[3::2003] = float("inf")
    x[4::2003] = float("-inf")
    for scale, shape in [(torch.tensor(0.37), x.shape), (torch.rand(5, 1, generator=gen) + 0.5, (5, -1))]:
        xs = x[: (x.numel() // 5) * 5].reshape(shape) if scale.numel() > 1 else x
        got = quantize_fp8_cpu(xs, scale, **kw)
        want = _cast_reference(xs / scale, f, saturate).view(torch.uint8)
        nan_got, nan_want = got.view(f.dtype).float().isnan(), want.view(f.dtype).float().isnan()
        assert torch.equal(nan_got, nan_want) and torch.equal(got[~nan_want], want[~nan_want])
        deq = dequantize_fp8_cpu(got, scale, fp8_dtype=f.dtype, out_dtype=torch.float32, force=True)
        ref = got.view(f.dtype).float() * scale
        assert torch.equal(deq.isnan(), ref.isnan()) and torch.equal(deq.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("m", [1, 5, 70])
def test_int8_kernel_with_outlier_columns(lib, gen, m):
    """The fused float outlier part equals the reference decomposition (float32 sums in another order)."""
    from eightbit.functional.int8 import _int8_linear_forward
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels import reference_only

    w = torch.randn(300, 517, generator=gen)
    w_int8, w_absmax = quantize_vectorwise(w)
    x = torch.randn(m, 517, generator=gen)
    x[:, [3, 100, 516]] *= 40  # three outlier columns
    got = _int8_linear_forward(x, w_int8, w_absmax, 6.0)
    with reference_only():
        want = _int8_linear_forward(x, w_int8, w_absmax, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    no_decomp = _int8_linear_forward(x, w_int8, w_absmax, 0.0)
    assert (got - want).abs().max() < 0.01 * (no_decomp - want).abs().max()  # the outlier part is really there


@pytest.mark.parametrize("m,k", [(1, 4096), (3, 33), (70, 257)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_prepare_activations_matches_reference(lib, gen, m, k, threshold):
    from eightbit.functional.int8 import outlier_columns
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.int8_cpu import int8_prepare_activations_cpu

    x = torch.randn(m, k, generator=gen) * 2
    x[:, k // 3] *= 20  # an outlier column
    x[0, : k // 2] = 0.0  # ties and zeros
    x[-1] = 0.0  # an all-zero row
    x[:, 1] = 2.5 * (2 * 127 / 254)  # exact .5 steps after scaling appear often with repeated values
    got = int8_prepare_activations_cpu(x, threshold)
    assert got is not None
    cols = outlier_columns(x, threshold)
    q, a = quantize_vectorwise(x.index_fill(1, cols, 0.0) if cols.numel() else x)
    assert torch.equal(got[2], cols) and torch.equal(got[0], q) and torch.equal(got[1], a)


def test_int8_prepare_activations_defers_special_rows(lib, gen):
    from eightbit.kernels.int8_cpu import int8_prepare_activations_cpu

    x = torch.randn(4, 64, generator=gen)
    for special in (float("nan"), 1e-38):
        y = x.clone()
        y[2] = special if special != special else y[2]
        y[2, 5] = special
        if special == 1e-38:
            y[2] = 1e-38  # subnormal step: the reference computes in float64
        assert int8_prepare_activations_cpu(y, 6.0) is None
    assert int8_prepare_activations_cpu(x.t(), 6.0) is None  # non-contiguous: reference
    assert int8_prepare_activations_cpu(x.half(), 6.0) is None


def test_native_absmax_matches_torch(lib, gen):
    """eb_absmax_bits: max |x| in one pass (all sizes around the parallel chunking), None with NaN/Inf present."""
    from eightbit.functional.affine import finite_amax
    from eightbit.kernels.fp8_cpu import absmax_cpu

    for n in [1, 7, 65536, 65537, 16 * 65536 + 3]:
        x = torch.randn(n, generator=gen) * 3
        x[n // 2] = -x.abs().max() * 2  # the extreme is negative
        got = absmax_cpu(x)
        assert got is not None and got.dtype == torch.float32 and got.dim() == 0
        assert torch.equal(got, x.abs().amax())
    assert torch.equal(absmax_cpu(torch.tensor([0.0, -0.0])), torch.tensor(0.0))
    assert torch.equal(absmax_cpu(torch.tensor([1e-45, -3e-45])), torch.tensor(3e-45))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(100_000)
        x[5] = bad
        assert absmax_cpu(x) is None
        assert float(finite_amax(x)) == 1.0  # the finite-only fallback
    assert absmax_cpu(torch.ones(4, dtype=torch.float64)) is None
    assert absmax_cpu(torch.ones(8, 4).T) is None  # non-contiguous
