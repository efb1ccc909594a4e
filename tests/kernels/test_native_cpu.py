"""Native CPU kernels (kernels/cpu/csrc/*.c) against the plain-PyTorch references: block-wise
quantize/dequantize bit-identical, stochastic rounding bit-identical and unbiased, the fused 8-bit optimizer step
of every rule bit-identical in its states (parameters within a few ulps of the step), thread splits that do not
change results, and the fallback when no compiler works."""

import pytest
import torch

import eightbit.optim as O
from eightbit.functional import create_binary_dynamic_map, create_dynamic_map, create_linear_map
from eightbit.functional.blockwise import dequantize_blocks, quantize_blocks
from eightbit.functional.codes import codebook
from eightbit.functional.rounding import step_seed
from eightbit.kernels import reference_only
from eightbit.kernels.cpu import native
from eightbit.kernels.cpu.blockwise import dequantize_into, quantize_into

CODES = {
    "dynamic-signed": lambda: create_dynamic_map(signed=True),
    "dynamic-unsigned": lambda: create_dynamic_map(signed=False),
    "linear": lambda: create_linear_map(signed=True),
    "binary-signed": lambda: create_binary_dynamic_map(signed=True),
    "binary-unsigned": lambda: create_binary_dynamic_map(signed=False),
}


def native_quantize(x2d, code, seed=-1, first=0, lut=None):
    """(uint8 codes, absmax) of the native kernel for (nblocks, blocksize) ``x2d``."""
    q = torch.empty(x2d.shape, dtype=torch.uint8)
    absmax = torch.empty(x2d.shape[0], dtype=torch.float32)
    assert quantize_into(x2d, code, x2d.shape[1], q, absmax, seed, first, lut)
    return q, absmax


def native_dequantize(q2d, absmax, code):
    out = torch.empty(q2d.shape, dtype=torch.float32)
    assert dequantize_into(q2d, absmax, code, q2d.shape[1], out)
    return out


def _hostile(n: int, gen: torch.Generator, *, nonneg: bool) -> torch.Tensor:
    x = torch.randn(n, generator=gen) * torch.logspace(-30, 30, n).roll(int(torch.randint(n, (1,), generator=gen)))
    x[::97] = 0.0
    x[5::211] = -0.0
    x[7::301] = 1e-45  # subnormal
    x[11::401] = torch.finfo(torch.float32).max
    return x.abs() if nonneg else x


@pytest.mark.parametrize("code_name", list(CODES))
@pytest.mark.parametrize("bs", [64, 256, 2048, 4096])
def test_quantize_dequantize_bit_identical(lib, gen, code_name, bs):
    code = CODES[code_name]()
    x = _hostile(bs * 13, gen, nonneg=code_name.endswith("unsigned")).view(13, bs)
    x[3, 5] = float("nan")
    x[8, 0] = float("-inf")
    q, absmax = native_quantize(x, code)
    q_ref, absmax_ref = quantize_blocks(x, codebook(code))
    assert torch.equal(q, q_ref)
    assert torch.equal(absmax.isnan(), absmax_ref.isnan())
    assert torch.equal(absmax.nan_to_num(), absmax_ref.nan_to_num())
    y = native_dequantize(q, absmax, code)
    y_ref = dequantize_blocks(q, absmax, code)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
    assert y[3].isnan().all() and y[8].isnan().all() and not y[[0, 1, 2]].isnan().any()


@pytest.mark.parametrize("code_name", list(CODES))
def test_stochastic_rounding_bit_identical_and_unbiased(lib, gen, code_name):
    code = CODES[code_name]()
    x = _hostile(2048 * 9, gen, nonneg=code_name.endswith("unsigned")).view(9, 2048)
    x[4, 9] = float("nan")  # a flagged block rounds nothing
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    # the element counter is taken mod 2^31: far past it, and a block that crosses it (its hashes cannot step)
    for first in (2**33 + 12345, 2**31 - 1000):
        q, absmax = native_quantize(x, code, seed=seed, first=first)
        q_ref, absmax_ref = quantize_blocks(x, codebook(code), seed, first)
        assert torch.equal(q, q_ref) and torch.equal(absmax.nan_to_num(), absmax_ref.nan_to_num()), first
    # unbiased: the mean over many seeds of the dequantized value approaches x (RTN stays biased)
    x1 = torch.rand(1, 2048, generator=gen) * 0.01 + 0.5  # inside one code interval of every map
    x1[0, 0] = 1.0  # pins absmax
    draws = torch.stack([  # seeds as the optimizers make them: a hash of (step, state)
        native_dequantize(*native_quantize(x1, code, seed=step_seed(s, 1)), code)  # absmax 1 (2 for binary maps)
        for s in range(200)
    ])
    err_sr = (draws.mean(0) - x1).abs()[0, 1:].mean()
    err_rtn = (native_dequantize(*native_quantize(x1, code), code) - x1).abs()[0, 1:].mean()
    assert err_sr < 0.25 * err_rtn, (err_sr, err_rtn)


@pytest.mark.parametrize("signed", [True, False])
def test_binary_map_edges_bit_identical(lib, gen, signed):
    """The arithmetic encoders of the binary maps at every code, every midpoint and their float neighbours
    (ties, gap edges, group edges, the region below the smallest code), both signs, nearest and stochastic:
    equal to the reference's table search. Each block's largest value pins its power-of-two scale to 1."""
    code = create_binary_dynamic_map(signed)
    cb = codebook(code)
    pts = torch.cat([code, cb.midpoints, code / 2, cb.midpoints / 4, torch.tensor([0.0, -0.0, 1e-45, 2.0**-30])])
    up, down = torch.full_like(pts, float("inf")), torch.full_like(pts, -float("inf"))
    x = torch.cat([pts, torch.nextafter(pts, up), torch.nextafter(pts, down)])
    x = torch.cat([x, -x]) if signed else x.abs()
    x = x[x.abs() < 1]
    x = x[torch.randperm(x.numel(), generator=gen)]
    bs = 256
    x = torch.cat([x, torch.zeros(-x.numel() % bs)]).view(-1, bs)
    x[:, 0] = 0.75  # scale 2^0 for every block
    for seed in (-1, 1, 12345, int(torch.randint(2**31 - 1, (1,), generator=gen))):
        q, absmax = native_quantize(x, code, seed=seed, first=77)
        q_ref, absmax_ref = quantize_blocks(x, cb, seed, 77)
        assert torch.equal(absmax, absmax_ref) and bool((absmax == 1).all())
        bad = (q != q_ref).nonzero()
        assert bad.numel() == 0, (seed, [(float(x[i, j]), int(q[i, j]), int(q_ref[i, j])) for i, j in bad[:5].tolist()])


def test_stochastic_rounding_keeps_exact_codes(lib):
    code = create_dynamic_map(signed=False)
    x = code.repeat(8).view(8, 256)  # every value is a code; absmax 1
    for seed in range(5):
        q, _ = native_quantize(x.contiguous(), code, seed=seed)
        assert torch.equal(q.long(), torch.arange(256).repeat(8, 1))


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of float32 at |x| (the subnormal step at 0)."""
    a = x.abs().float()
    return torch.nextafter(a, torch.full_like(a, float("inf"))) - a


OPTIMIZERS = {
    "AdamW8bit": lambda p, **kw: O.AdamW8bit([p], 1e-3, **kw),
    "Adam8bit-L2": lambda p, **kw: O.Adam8bit([p], 1e-3, weight_decay=0.01, **kw),
    "SGD8bit": lambda p, **kw: O.SGD8bit([p], 1e-2, momentum=0.9, nesterov=True, weight_decay=0.01, **kw),
    "RMSprop8bit": lambda p, **kw: O.RMSprop8bit([p], 1e-3, **kw),
    "Adagrad8bit": lambda p, **kw: O.Adagrad8bit([p], 1e-2, lr_decay=0.01, **kw),
    "Lion8bit": lambda p, **kw: O.Lion8bit([p], 1e-4, weight_decay=0.1, **kw),
    "LAMB8bit": lambda p, **kw: O.LAMB8bit([p], 1e-3, weight_decay=0.01, **kw),
    "LARS8bit": lambda p, **kw: O.LARS8bit([p], 1e-2, **kw),
    "AdEMAMix8bit": lambda p, **kw: O.AdEMAMix8bit([p], 1e-3, **kw),
    "Adam8bit-max_unorm": lambda p, **kw: O.Adam8bit([p], 1e-3, max_unorm=0.01, **kw),
}
NORM_RULES = ("LAMB8bit", "LARS8bit", "Adam8bit-max_unorm")  # the step's size comes from its update norm


def _step_native_and_reference(o1, p1, o2, p2, g, step, norm=False):
    """One step of o1 (native kernels) and o2 (reference) with gradient g: states and parameters bit-identical.

    norm: the step is scaled by its update norm (trust ratio, max_unorm), which the kernel and the reference sum
    in float64 in different orders; their float32 sums may then differ by an ulp (the exact sum lying near a
    rounding boundary), and so may the float32 update_scale, which scales lr * update_scale by at most 2^-23 more,
    and the parameter by an ulp of its result plus 2^-22 of its step (the step's own product and difference
    round once more). The states do not depend on it (exact). The reference's parameter is then synced to the
    kernel's, so each step is checked on equal inputs."""
    p_old = p2.detach().clone()
    p1.grad, p2.grad = g.clone(), g.clone()
    o1.step()
    with reference_only():
        o2.step()
    for k, v in o1.state[p1].items():
        assert torch.equal(v, o2.state[p2][k]), (k, step)
    if norm:
        bound = _ulp(p2.detach()) + 2.0**-22 * (p2.detach() - p_old).abs()
        diff = (p1.detach() - p2.detach()).abs() > bound
        with torch.no_grad():
            p2.copy_(p1)
    else:
        diff = p1.detach() != p2.detach()
    assert not diff.any(), f"step {step}: {int(diff.sum())} parameters differ, first at {int(diff.nonzero()[0])}"


@pytest.mark.parametrize("kw", [{}, {"stochastic_rounding": False}, {"percentile_clipping": 90},
                                {"state_code": "dynamic"}, {"min_8bit_size": 10**9}])  # the last: 32-bit states
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_native_matches_reference(lib, gen, name, kw):
    """States and parameters bit-identical to the reference after every step. Both round each operation once in
    float32 in the same order (the reference's square root goes through float64 because torch's vectorized float32
    one is not correctly rounded); any slack would hide a real difference, since L2 decay that cancels the gradient
    (|g + wd p| << |g|) amplifies an ulp of the parameter into tens of ulps of the next step."""
    if "SGD" in name or "Lion" in name or "LARS" in name:
        kw = {k: v for k, v in kw.items() if k in ("percentile_clipping", "state_code", "min_8bit_size")}
    n = 2048 * 20 + 77  # native full blocks + the partial last block
    p1 = torch.nn.Parameter(torch.randn(n, generator=gen))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = OPTIMIZERS[name](p1, **kw), OPTIMIZERS[name](p2, **kw)
    for step in range(6):
        g = torch.randn(n, generator=gen)
        g[100:300] *= 1e4  # outliers in one block
        _step_native_and_reference(o1, p1, o2, p2, g, step, name in NORM_RULES)


@pytest.mark.parametrize("name", ["AdamW8bit", "SGD8bit", "RMSprop8bit", "Adagrad8bit", "Lion8bit", "AdEMAMix8bit"])
@pytest.mark.parametrize("bs", [64, 256, 2048])
def test_native_scale_folding_and_its_fallbacks(lib, gen, bs, name):
    """The fused passes fold a block's power-of-two scale into their decode tables (AVX-512 VBMI) only while the
    smallest code stays a normal float: blocks of tiny gradients (scales of 2^-110 and below, and all-zero
    blocks with absmax 0) take the multiplying decoder. Bit-identical to the reference either way, with the
    blocks mixed in one tensor, over several steps, NaN/Inf blocks skipped."""
    n = bs * 12 + 40
    p1 = torch.nn.Parameter(torch.randn(n, generator=gen))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = OPTIMIZERS[name](p1, blocksize=bs), OPTIMIZERS[name](p2, blocksize=bs)
    for step in range(5):
        g = torch.randn(n, generator=gen)
        g[:bs] *= 1e-20  # v underflows to 0 or near it: absmax 0 or far below 2^-103
        g[bs : 2 * bs] *= 1e-17
        g[2 * bs : 3 * bs] = 0.0
        g[3 * bs : 4 * bs] *= 1e18  # scales near the top of the float range
        if step == 3:
            g[5 * bs + 1], g[-1] = float("nan"), float("inf")
        _step_native_and_reference(o1, p1, o2, p2, g, step)
    assert int(o1.state[p1]["skipped_blocks"]) == 2


def test_optimizer_update_rejects_a_malformed_skip_counter(gen):
    from eightbit.functional.optimizer import OptimHyper, optimizer_update
    p, g = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    s = [torch.zeros(100)]
    for bad in (torch.zeros(1), torch.zeros(2, dtype=torch.int64), 3):
        with pytest.raises(ValueError, match="skipped"):
            optimizer_update("momentum", p, g, s, [], [], OptimHyper(lr=0.1), wd_mode=0, blocksize=64, seeds=[-1],
                             skipped=bad)


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
            results.append((p.detach().clone(), opt.state[p]["state1"].clone(), opt.state[p]["state2"].clone()))
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
    am = opt.state[p]["absmax1"]
    assert am[5].isnan() and not am[torch.arange(16) != 5].isnan().any()
    assert torch.isfinite(p.detach()[: 2048 * 5]).all() and torch.isfinite(p.detach()[2048 * 6:]).all()
    assert not torch.equal(before["state1"][:2048], opt.state[p]["state1"][:2048])  # other blocks did step


def test_fallback_when_build_fails(monkeypatch, gen):
    monkeypatch.setattr(native, "_compiler", lambda: "/nonexistent/cc")
    monkeypatch.setenv("EIGHTBIT_CACHE_DIR", "/nonexistent-dir/eightbit")
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
            assert native.library() is None
        p = torch.nn.Parameter(torch.randn(2048 * 10, generator=gen))
        p.grad = torch.randn_like(p)
        O.AdamW8bit([p], 1e-3).step()  # the registered kernels decline: the reference runs
        assert torch.isfinite(p.detach()).all()
    finally:
        native.library.cache_clear()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("EIGHTBIT_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None
    finally:
        monkeypatch.delenv("EIGHTBIT_NATIVE")
        native.library.cache_clear()


# every remainder of the 4-row and 2-row row tiles, and both loop nests (the panel tile's remainders: below)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 16, 70, 256])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 63, 64, 65, 1000, 4099])
def test_int8_kernel_exact(lib, gen, m, k):
    from eightbit.functional.int8 import int8_matmul_dequant_reference
    from eightbit.kernels.cpu.int8 import native_gemm

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
    got = native_gemm(x, xa, w, wa)
    want = int8_matmul_dequant_reference(x, xa, w, wa)
    exact = (x.double() @ w.double().T) * (xa.double().unsqueeze(1) / 127) * (wa.double().unsqueeze(0) / 127)
    assert got.shape == (m, n)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


def test_int8_linear_kernel_declines_k_beyond_exact_range(lib):
    from eightbit.kernels.cpu.int8 import _NATIVE_MAX_K, int8_linear_cpu

    k = _NATIVE_MAX_K + 1
    x, w = torch.zeros(1, k), torch.zeros(2, k, dtype=torch.int8)
    assert int8_linear_cpu(x, w, torch.ones(2), None, 6.0) is NotImplemented


def test_int8_matmul_dequant_op_noncontiguous_and_minus_128(lib, gen):
    """The public function makes strided inputs contiguous; the -128 code (outside the native GEMM's range)
    takes the exact chunked path: both equal the reference."""
    from eightbit.functional import int8_matmul_dequant
    from eightbit.functional.int8 import int8_matmul_dequant_reference

    x = torch.randint(-127, 128, (130, 3), dtype=torch.int8, generator=gen).T  # (3, 130) strided
    w = torch.randint(-128, 128, (130, 50), dtype=torch.int8, generator=gen).T  # (50, 130) strided
    xa, wa = torch.rand(3, generator=gen), torch.rand(50, generator=gen)
    torch.testing.assert_close(int8_matmul_dequant(x, xa, w, wa), int8_matmul_dequant_reference(x, xa, w, wa),
                               rtol=1e-6, atol=0)
    x = x.contiguous()
    x[1, 7] = -128
    torch.testing.assert_close(int8_matmul_dequant(x, xa, w, wa), int8_matmul_dequant_reference(x, xa, w, wa),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz"])
@pytest.mark.parametrize("saturate", [True, False])
def test_fp8_native_casts_bit_identical(lib, gen, name, saturate):
    from eightbit.functional import FP8_FORMATS
    from eightbit.functional.fp8 import _cast_reference
    from eightbit.kernels.cpu.fp8 import dequantize_fp8_cpu, quantize_fp8_cpu

    f = FP8_FORMATS[name]
    x = _hostile(3 * 65536 + 5, gen, nonneg=False)  # crosses the per-thread work units
    x[::1009] = float("nan")
    x[3::2003] = float("inf")
    x[4::2003] = float("-inf")
    for scale, shape in [(torch.tensor(0.37), x.shape), (torch.rand(5, 1, generator=gen) + 0.5, (5, -1))]:
        xs = x[: (x.numel() // 5) * 5].reshape(shape) if scale.numel() > 1 else x
        got = quantize_fp8_cpu(xs.contiguous(), scale, f.dtype, saturate)
        want = _cast_reference(xs / scale, f, saturate).view(torch.uint8)
        nan_got, nan_want = got.view(f.dtype).float().isnan(), want.view(f.dtype).float().isnan()
        assert torch.equal(nan_got, nan_want) and torch.equal(got[~nan_want], want[~nan_want])
        deq = dequantize_fp8_cpu(got, scale, f.dtype, torch.float32)
        ref = got.view(f.dtype).float() * scale
        assert torch.equal(deq.isnan(), ref.isnan()) and torch.equal(deq.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("m", [1, 5, 20, 70, 300])  # the row nest (few rows) and the panel nest
@pytest.mark.parametrize("n_cols", [3, 32, 40])  # outlier columns summed in the epilogue; 40: the BLAS product
def test_int8_kernel_with_outlier_columns(lib, gen, m, n_cols):
    """The float outlier part is summed in the reference's order (outlier_product), so the kernel equals the
    reference bit for bit, with or without bias."""
    from eightbit.functional.int8 import int8_linear_reference
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.cpu.int8 import int8_linear_cpu

    w = torch.randn(300, 517, generator=gen)
    w_int8, w_absmax = quantize_vectorwise(w)
    x = torch.randn(m, 517, generator=gen)
    cols = torch.randperm(517, generator=gen)[:n_cols]  # outlier columns, |x| >= 30 in every row
    x[:, cols] += torch.where(x[:, cols] < 0, -30.0, 30.0)
    for bias in (torch.randn(300, generator=gen), None):
        got = int8_linear_cpu(x, w_int8, w_absmax, bias, 6.0)
        want = int8_linear_reference(x, w_int8, w_absmax, bias, 6.0)
        assert torch.equal(got, want), f"max diff {(got - want).abs().max().item():.3g}"
    no_decomp = int8_linear_cpu(x, w_int8, w_absmax, bias, 0.0)
    assert (no_decomp - want).abs().max() > 0.1  # the outlier part is really there


@pytest.mark.parametrize("m", range(8, 26))  # panels from 8 rows at short K: every last-tile row count they reach
def test_int8_linear_kernel_every_panel_tile_remainder(lib, gen, m):
    """The panel nest runs full tiles of rows and a last tile of the rest, each row count its own code (with
    AVX-512 VNNI 8-row tiles and a last one of 5 to 12 rows; with AVX2 4-row tiles): with outlier columns, a bias
    and a partial last panel (N % 16), every count equals the reference bit for bit."""
    from eightbit.functional.int8 import int8_linear_reference
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.cpu.int8 import int8_linear_cpu

    w_int8, w_absmax = quantize_vectorwise(torch.randn(45, 133, generator=gen))
    x = torch.randn(m, 133, generator=gen)
    x[:, [5, 77]] *= 20  # outlier columns (|x| >= 6 in most rows)
    bias = torch.randn(45, generator=gen)
    for threshold in (6.0, 0.0):
        got = int8_linear_cpu(x, w_int8, w_absmax, bias, threshold)
        want = int8_linear_reference(x, w_int8, w_absmax, bias, threshold)
        assert torch.equal(got, want), f"threshold {threshold}: max diff {(got - want).abs().max().item():.3g}"


@pytest.mark.parametrize("path", ["op", "python kernel"])  # the op: the C++ kernel where it loads
@pytest.mark.parametrize("m", [3, 300])  # one thread (small M * K) and the parallel prepare
def test_int8_kernel_flag_guess_never_changes_the_result(lib, gen, m, path):
    """The kernel guesses each call's outlier columns from the same weight's previous call (one pass over x when
    right). Right, wrong (other columns, fewer, more, none), a guess that would hide a NaN row, a right guess with a
    NaN row (the kernel defers the call to the reference) and with a NaN in an outlier column, a column the guess
    lacks that reaches the threshold exactly, and one that holds Inf: every call equals the reference, and the guess
    the Python kernel keeps afterwards is the flags found (the C++ kernel keeps its own, the same way)."""
    from eightbit.functional import ops
    from eightbit.functional.int8 import int8_linear_reference, outlier_columns
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.cpu import torch_ext
    from eightbit.kernels.cpu.int8 import _flag_guess

    call = ops.int8_linear
    if path == "python kernel" and torch_ext.int8_linear_loaded():
        call = torch.ops.eightbit_cpu.int8_linear_py

    k = 517
    w_int8, w_absmax = quantize_vectorwise(torch.randn(300, k, generator=gen))
    bias = torch.randn(300, generator=gen)

    def planted(cols):
        x = torch.randn(m, k, generator=gen)
        x[:, cols] += torch.where(x[:, cols] < 0, -30.0, 30.0)
        return x

    a, b = [3, 100, 516], [7, 200]
    nan_row = planted([])
    nan_row[1, a[0]] = float("nan")  # no outliers: with the guess a, this NaN would sit in a flagged column
    nan_flagged = planted(a)
    nan_flagged[2, a[1]] = float("nan")  # a NaN inside a true outlier column: a right guess stays right
    at_threshold = planted(a)
    at_threshold[min(m - 1, 2), 50] = -6.0  # |x| == threshold flags a column the guess lacks
    inf_col = planted(a)
    inf_col[0, 60] = float("inf")  # Inf is an outlier: a column the guess lacks
    sequence = [planted(a), planted(a), planted(b), planted([]), planted([]), planted(a), nan_row, nan_row,
                planted(a[:1]), planted(a), nan_flagged, at_threshold, planted(a), inf_col, planted(a)]
    wants = []
    for i, x in enumerate(sequence):
        got = call(x, w_int8, w_absmax, bias, 6.0)
        want = int8_linear_reference(x, w_int8, w_absmax, bias, 6.0)
        wants.append(want)
        assert torch.equal(got.isnan(), want.isnan()), f"call {i}"
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), f"call {i}"
        if call is ops.int8_linear and torch_ext.int8_linear_loaded():
            continue
        guess = _flag_guess(w_int8, k)
        flags = torch.zeros(k, dtype=torch.bool)
        flags[outlier_columns(x, 6.0)] = True
        assert guess[k] == 1 and torch.equal(guess[:k].bool(), flags), f"call {i}"
    for want in wants[6:8]:  # the NaN row after a wrong guess, then after a right one: its output row only
        assert want[1].isnan().all() and not want[0].isnan().any()


@pytest.mark.parametrize("m,k", [(1, 4096), (3, 33), (70, 257)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_prepare_activations_matches_reference(lib, gen, m, k, threshold):
    from eightbit.functional.vectorwise import int8_vectorwise_quant_reference
    from eightbit.kernels.cpu.int8 import int8_vectorwise_quant_cpu

    x = torch.randn(m, k, generator=gen) * 2
    # an outlier column, |x| = 30 > threshold in every row (scaling randn let row 1 fall below 6 in ~1 of 8 seeds)
    x[:, k // 3] = torch.where(x[:, k // 3] < 0, -30.0, 30.0)
    x[0, : k // 2] = 0.0  # ties and zeros
    x[-1] = 0.0  # an all-zero row
    x[:, 1] = 2.5 * (2 * 127 / 254)  # exact .5 steps after scaling appear often with repeated values
    got = int8_vectorwise_quant_cpu(x, threshold)
    assert got is not NotImplemented
    want = int8_vectorwise_quant_reference(x, threshold)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    if m >= 3:  # row 1 keeps the planted outlier column (rows 0 and -1 are zeroed there)
        assert bool(want[2].any()) == (threshold > 0)


def test_int8_prepare_activations_defers_special_rows(lib, gen):
    from eightbit.functional import int8_vectorwise_quant_columns
    from eightbit.functional.vectorwise import int8_vectorwise_quant_reference
    from eightbit.kernels.cpu.int8 import int8_vectorwise_quant_cpu

    x = torch.randn(4, 64, generator=gen)
    for special in (float("nan"), 1e-38):
        y = x.clone()
        y[2, 5] = special
        if special == 1e-38:
            y[2] = 1e-38  # subnormal step: the reference computes in float64
        assert int8_vectorwise_quant_cpu(y, 6.0) is NotImplemented
        got = int8_vectorwise_quant_columns(y, 6.0)  # through the op: the reference serves it
        want = int8_vectorwise_quant_reference(y, 6.0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1].isnan(), want[1].isnan())


def test_native_absmax_matches_torch(lib, gen):
    """eb_absmax_bits: max |x| in one pass (all sizes around the parallel chunking), None with NaN/Inf present."""
    from eightbit.functional.affine import finite_amax
    from eightbit.kernels.cpu.fp8 import finite_amax_cpu

    def absmax_cpu(x):
        out = finite_amax_cpu(x, None)
        return None if out is NotImplemented else out

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


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_int8_kernel_bit_identical(lib, gen, per_row, symmetric):
    """Affine int8 codes: the native pass equals the reference's division, round half to even, NaN -> 0 and clamp
    on ties (k + 0.5 steps), NaN, +-Inf, huge and subnormal values, odd sizes (per tensor: a partial work unit)."""
    from eightbit.functional.affine import quantize_int8_reference
    from eightbit.kernels.cpu.affine import quantize_int8_cpu

    rows, cols = (7, 1031) if per_row else (3, 70001)
    scale = torch.rand(rows, generator=gen) * 0.1 + 1e-3 if per_row else torch.tensor(0.0371)
    x = torch.randn(rows, cols, generator=gen) * 3
    s_b = scale.reshape(-1, 1) if per_row else scale
    ties = (torch.randint(-130, 130, (rows, 64), generator=gen).float() + 0.5) * s_b  # exact half steps (mostly)
    x[:, :64] = ties
    x[:, 64:72] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-40, -0.0, 0.0])
    zp = (torch.randint(0, 256, (rows,), generator=gen, dtype=torch.int32) if per_row
          else torch.tensor(0 if symmetric else 131, dtype=torch.int32))
    if symmetric:
        zp = torch.zeros_like(zp)
    axis = 0 if per_row else None
    got = quantize_int8_cpu(x, scale, zp, axis, symmetric)
    want = quantize_int8_reference(x, scale, zp, axis, symmetric)
    assert got.dtype == want.dtype == (torch.int8 if symmetric else torch.uint8)
    assert torch.equal(got, want)
    assert quantize_int8_cpu(x.double(), scale, zp, axis, symmetric) is NotImplemented


@pytest.mark.parametrize("axis", [None, 0])
def test_finite_minmax_kernel_equals_reference(lib, gen, axis):
    """min/max over the finite values, NaN and +-Inf ignored, slices without finite values giving 0, per tensor
    (several work units and a partial one) and per row."""
    from eightbit.functional.affine import finite_minmax_reference
    from eightbit.kernels.cpu.affine import finite_minmax_cpu

    x = torch.randn(9, 20001, generator=gen) * 5
    x[0, :50] = float("nan")
    x[1, 7], x[2, 9] = float("inf"), -float("inf")
    x[3] = float("nan")  # a row without finite values
    x[4, ::2] = float("inf")
    x[5, 100] = 1e30  # the extremes are finite values
    x[6, 200] = -1e30
    for t in (x, torch.full((3, 5), float("nan")), torch.full((70000,), -float("inf")), torch.tensor([[-0.0, 2.0]])):
        if axis == 0 and t.dim() == 1:
            continue
        got, want = finite_minmax_cpu(t, axis), finite_minmax_reference(t, axis)
        assert all(g.dtype == torch.float32 and g.shape == w.shape and torch.equal(g, w) for g, w in zip(got, want))
    assert finite_minmax_cpu(x.double(), axis) is NotImplemented


def test_int8_linear_scratch_reuse_is_safe(lib, gen):
    """The per-thread scratch buffer is reused across calls and shapes, and across threads each has its own: earlier
    results stay intact and every result equals the reference."""
    import threading

    from eightbit.functional.int8 import int8_linear_reference
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.cpu.int8 import int8_linear_cpu

    cases = []
    for m, k, n in [(300, 517, 64), (20, 96, 33), (300, 517, 64), (1, 2000, 7)]:
        w_int8, w_absmax = quantize_vectorwise(torch.randn(n, k, generator=gen))
        x = torch.randn(m, k, generator=gen)
        x[:, 1] += 40.0  # an outlier column
        cases.append((x, w_int8, w_absmax, torch.randn(n, generator=gen)))
    wants = [int8_linear_reference(*c, 6.0) for c in cases]
    gots = [int8_linear_cpu(*c, 6.0) for c in cases]
    assert all(torch.equal(g, w) for g, w in zip(gots, wants))  # checked after all calls: nothing was overwritten
    errors = []

    def worker():
        for _ in range(20):
            for c, want in zip(cases, wants):
                if not torch.equal(int8_linear_cpu(*c, 6.0), want):
                    errors.append("mismatch")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_int8_kernels_decline_a_threshold_float32_rounds_to_zero(lib, gen):
    """A positive threshold below float32's smallest subnormal would reach C as 0 (no outliers) while the reference
    flags every column: the kernels hand such a call to the reference."""
    from eightbit.functional.int8 import int8_linear_reference
    from eightbit.functional.vectorwise import quantize_vectorwise
    from eightbit.kernels.cpu.int8 import int8_linear_cpu, int8_vectorwise_quant_cpu

    w_int8, w_absmax = quantize_vectorwise(torch.randn(5, 12, generator=gen))
    x = torch.randn(3, 12, generator=gen)
    assert int8_linear_cpu(x, w_int8, w_absmax, None, 1e-50) is NotImplemented
    assert int8_vectorwise_quant_cpu(x, 1e-50) is NotImplemented
    assert torch.equal(int8_linear_cpu(x, w_int8, w_absmax, None, 1e-40), int8_linear_reference(x, w_int8, w_absmax, None, 1e-40))


NORM_STATE_SIGNS = {"adam": (True, False), "lamb": (True, False), "momentum": (True,), "rmsprop": (False,),
                    "adagrad": (False,), "lion": (True,), "ademamix": (True, True, False)}


@pytest.mark.parametrize("wd_mode", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("states_kind", ["binary", "dynamic", "32-bit"])
@pytest.mark.parametrize("rule", list(NORM_STATE_SIGNS))
def test_native_update_norm_matches_reference(lib, gen, rule, states_kind, dtype, wd_mode):
    """``optimizer_update_norm`` (LAMB's and LARS's trust ratios, max_unorm) by the native kernel: every rule, 8-bit
    states on both maps and 32-bit ones, float32/bf16/fp16 parameters, each weight-decay mode, full blocks and a
    partial last one, blocks of 2048 (Adam and LAMB on binary maps take the fused pass) and of 48 (not a multiple
    of 32: the generic path). Both results: the direction's squared norm and the parameter's. The directions
    are the reference's bit for bit; both sum their exact squares in float64 (in different orders: at most
    2 n 2^-53 of the sum apart) and round once to float32 (2^-24 each), so they agree within 2^-22 of each sum.
    Outliers in the gradient make the squares span many binades."""
    from eightbit.functional.codes import binary_codebook, dynamic_codebook
    from eightbit.functional.optimizer import OptimHyper, optimizer_update_norm_reference
    from eightbit.kernels.cpu.optimizer import optimizer_update_norm_cpu
    hyper = OptimHyper(lr=1e-3, weight_decay=0.01, grad_scale=0.5, beta1=0.9, one_minus_beta1=0.1, beta2=0.999,
                       one_minus_beta2=0.001, beta3=0.9999, one_minus_beta3=0.0001, alpha=5.0, eps=1e-8,
                       bias_correction1=0.271, bias_correction2_sqrt=0.0547, lr_decay=0.9,
                       nesterov=1.0).as_list()
    for bs in (2048, 48):
        n = bs * 5 + 13
        p = torch.randn(n, generator=gen).to(dtype)
        g = (torch.randn(n, generator=gen) * 0.01)
        g[bs + 3 : bs + 40] *= 1e4
        g = g.to(dtype)
        signs = NORM_STATE_SIGNS[rule]
        if states_kind == "32-bit":
            states = [torch.randn(n, generator=gen) * 0.01 if s else torch.rand(n, generator=gen) * 1e-4
                      for s in signs]
            absmaxes, codes = [], []
        else:
            make = binary_codebook if states_kind == "binary" else dynamic_codebook
            states = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen) for _ in signs]
            nb = -(-n // bs)
            absmaxes = [torch.rand(nb, generator=gen) * (0.1 if s else 1e-3) for s in signs]
            codes = [make(s).values for s in signs]
        args = (rule, p, g, states, absmaxes, codes, hyper, wd_mode, bs)
        got = optimizer_update_norm_cpu(*args)
        assert got is not NotImplemented
        want = optimizer_update_norm_reference(*args)
        assert got.dtype == torch.float32 and got.shape == want.shape == (2,)
        assert torch.isfinite(want).all() and (want > 0).all()
        assert (got - want).abs().le(2.0**-22 * want).all(), (bs, got, want)
        exact_p = float(p.double().square().sum())  # the parameter's: an independent float64 sum
        assert abs(float(got[1]) - exact_p) <= 2.0**-23 * exact_p
