"""The native optimizer kernel over several parameters in one call (``eb_optim_many``: one parallel region whose
per-thread runs of blocks cross tensor boundaries) against the reference, parameter by parameter."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import eightbit.optim as O
from eightbit.functional.optimizer import WD_DECOUPLED, OptimHyper, optimizer_update_many
from eightbit.functional.rounding import step_seed
from eightbit.kernels import reference_only


def _adam_states(sizes, gen):
    """(parameters, their AdamW8bit states after one step): parameter 3 on the decimal maps, the others on the
    binary ones, so that one call mixes maps (each thread rebuilds its folded tables when the map changes)."""
    ps, sts = [], []
    for i, n in enumerate(sizes):
        p = torch.nn.Parameter(torch.randn(n, generator=gen))
        opt = O.AdamW8bit([p], 1e-3, min_8bit_size=1024, state_code="dynamic" if i == 3 else "binary")
        p.grad = torch.randn(n, generator=gen) * 0.01
        opt.step()
        ps.append(p.detach())
        sts.append(opt.state[p])
    return ps, sts


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_call_over_many_parameters_equals_the_reference(lib, gen, threads):
    """Every parameter with its own hyperparameters (step counts), seeds, maps, size (a partial last block, one
    parameter of a single block) and NaN blocks: parameters, codes, scales and skip counters bit-identical to
    the reference run parameter by parameter, whatever the thread count."""
    sizes = [2048 * 5 + 3, 2048, 2048 * 17, 2048 * 9 + 999, 2048 * 3, 2048 * 40]
    ps, sts = _adam_states(sizes, gen)
    gs = [torch.randn(n, generator=gen) * 0.01 for n in sizes]
    gs[2][2048 * 7 + 5] = float("nan")  # a block in the middle of a parameter
    gs[5][-1] = float("inf")  # the last full block of the last parameter
    gs[0][-2] = float("nan")  # the partial last block
    steps = [2, 3, 7, 2, 11, 5]
    hypers = [OptimHyper(lr=1e-3, weight_decay=0.01, beta1=0.9, one_minus_beta1=0.1, beta2=0.999,
                         one_minus_beta2=1e-3, eps=1e-8, bias_correction1=1 - 0.9**s,
                         bias_correction2_sqrt=(1 - 0.999**s) ** 0.5) for s in steps]
    seeds = [[-1, step_seed(s, 1)] for s in steps]

    def run(reference: bool):
        p = [x.clone() for x in ps]
        st = [[s["state1"].clone(), s["state2"].clone()] for s in sts]
        am = [[s["absmax1"].clone(), s["absmax2"].clone()] for s in sts]
        # parameter 4 reads its first state's codes on the unsigned binary map: a map that differs from the
        # previous part's with the same scales, so stale folded tables would decode it wrongly
        codes = [[s["qmap2" if i == 4 else "qmap1"], s["qmap2"]] for i, s in enumerate(sts)]
        skipped = [torch.zeros((), dtype=torch.int64) for _ in sizes]
        args = ("adam", p, gs, st, am, codes, hypers)
        kw = dict(wd_mode=WD_DECOUPLED, blocksizes=[2048] * len(sizes), seeds=seeds, skipped=skipped)
        if reference:
            with reference_only():
                optimizer_update_many(*args, **kw)
        else:
            optimizer_update_many(*args, **kw)
        return p, st, am, skipped

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        native_out = run(False)
    finally:
        torch.set_num_threads(before)
    reference_out = run(True)
    for i in range(len(sizes)):
        assert torch.equal(native_out[0][i], reference_out[0][i]), f"parameter {i}"
        for k in range(2):
            assert torch.equal(native_out[1][i][k], reference_out[1][i][k]), (i, k, "codes")
            assert torch.equal(native_out[2][i][k], reference_out[2][i][k]), (i, k, "scales")
    assert [int(s) for s in native_out[3]] == [int(s) for s in reference_out[3]] == [1, 0, 1, 0, 0, 1]


def test_one_call_steps_the_parameters_it_takes_and_declines_the_others(lib, gen):
    """In one op call, parameters the kernel declines (here a float64 one, whose reference runs) step beside
    the ones it takes, each exactly as on its own."""
    sizes = [2048 * 4, 2048 * 2 + 10]
    ps, sts = _adam_states(sizes, gen)
    ps[1] = ps[1].double()
    gs = [torch.randn(n, generator=gen, dtype=p.dtype) * 0.01 for n, p in zip(sizes, ps)]
    h = OptimHyper(lr=1e-3, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3, eps=1e-8,
                   bias_correction1=0.19, bias_correction2_sqrt=0.0447)
    outs = []
    for reference in (False, True):
        p = [x.clone() for x in ps]
        st = [[s["state1"].clone(), s["state2"].clone()] for s in sts]
        am = [[s["absmax1"].clone(), s["absmax2"].clone()] for s in sts]
        args = ("adam", p, gs, st, am, [[s["qmap1"], s["qmap2"]] for s in sts], [h, h])
        kw = dict(wd_mode=0, blocksizes=[2048, 2048], seeds=[[-1, 7], [-1, 8]])
        if reference:
            with reference_only():
                optimizer_update_many(*args, **kw)
        else:
            optimizer_update_many(*args, **kw)
        outs.append((p, st, am))
    for a, b in zip(outs[0], outs[1]):
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y)) if isinstance(x, list) else torch.equal(x, y)


def test_one_call_with_a_parameter_twice_steps_it_twice_in_order(lib, gen):
    """The same parameter twice in one call (torch only warns about duplicates in a group) is stepped twice, in
    order, as one call per parameter would: not by two threads at once (with 1,024 blocks each, the two threads'
    runs overlap in time)."""
    n = 2048 * 1024
    ps, sts = _adam_states([n], gen)
    g = torch.randn(n, generator=gen) * 0.01
    h = OptimHyper(lr=1e-3, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3, eps=1e-8,
                   bias_correction1=0.19, bias_correction2_sqrt=0.0447)
    outs = []
    for reference in (False, True):
        p = ps[0].clone()
        st = [sts[0]["state1"].clone(), sts[0]["state2"].clone()]
        am = [sts[0]["absmax1"].clone(), sts[0]["absmax2"].clone()]
        codes = [sts[0]["qmap1"], sts[0]["qmap2"]]
        args = ("adam", [p, p], [g, g], [st, st], [am, am], [codes, codes], [h, h])
        kw = dict(wd_mode=0, blocksizes=[2048, 2048], seeds=[[-1, 3], [-1, 4]])
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            if reference:
                with reference_only():
                    optimizer_update_many(*args, **kw)
            else:
                optimizer_update_many(*args, **kw)
        finally:
            torch.set_num_threads(before)
        outs.append((p, *st, *am))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_raw_op_with_a_temporary_contiguous_gradient(lib):
    """A raw op call with a non-contiguous gradient: the kernel's contiguous copy lives until the native call has
    read it. It was once freed before the call; glibc's MALLOC_PERTURB_ (freed memory overwritten) makes such a
    read visible as a result that differs from the reference, so the check runs in a child with it set."""
    code = """if True:
        import torch
        from eightbit.functional import ops
        from eightbit.functional.optimizer import OptimHyper
        from eightbit.kernels import reference_only
        import eightbit.optim as O
        n = 2048 * 512
        gen = torch.Generator().manual_seed(0)
        p0 = torch.nn.Parameter(torch.randn(n, generator=gen))
        opt = O.AdamW8bit([p0], 1e-3)
        p0.grad = torch.randn(n, generator=gen) * 0.01
        opt.step()
        s = opt.state[p0]
        g = (torch.randn(n, 2, generator=gen) * 0.01)[:, 0]  # stride 2
        h = OptimHyper(lr=1e-3, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3, eps=1e-8,
                       bias_correction1=0.19, bias_correction2_sqrt=0.0447).as_list()
        outs = []
        for reference in (False, True):
            p, st = p0.detach().clone(), [s["state1"].clone(), s["state2"].clone()]
            am = [s["absmax1"].clone(), s["absmax2"].clone()]
            args = ("adam", p, g, st, am, [s["qmap1"], s["qmap2"]], h, 0, 2048, [-1, 5], None)
            if reference:
                with reference_only():
                    ops.optimizer_update(*args)
            else:
                ops.optimizer_update(*args)
            outs.append((p, *st, *am))
        raise SystemExit(0 if all(torch.equal(a, b) for a, b in zip(*outs)) else 5)
    """
    env = dict(os.environ, MALLOC_PERTURB_="165", MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"rc {res.returncode}: {res.stderr[-2000:]}"


@pytest.mark.parametrize("rule,k", [("adam", 2), ("lamb", 2), ("momentum", 1), ("rmsprop", 1), ("adagrad", 1),
                                    ("lion", 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_call_over_many_32bit_states_equals_the_reference(lib, gen, monkeypatch, rule, k, threads):
    """32-bit states of many parameters in one native call (``eb_optim_f32_many``): each parameter with its own
    hyperparameters and size (empty, one element, a partial block, a parameter large enough to be split over
    the threads), one passed twice and NaN/Inf blocks: parameters, states and skip counters bit-identical to the
    reference run parameter by parameter. The reference is made to fail inside the native run, so every
    parameter must be taken by the kernel."""
    import eightbit.kernels.cpu.optimizer as K

    sizes = [384, 1, 0, 2048 * 3 + 5, 2048 * 40, 1536]
    ps = [torch.randn(n, generator=gen) for n in sizes]
    states = [[torch.rand(n, generator=gen) * 1e-3 for _ in range(k)] for n in sizes]
    gs = [torch.randn(n, generator=gen) * 0.01 for n in sizes]
    gs[3][2048 + 7] = float("nan")
    gs[4][-1] = float("inf")
    hypers = [OptimHyper(lr=1e-3 * (i + 1), weight_decay=0.01, beta1=0.9, one_minus_beta1=0.1, beta2=0.999,
                         one_minus_beta2=1e-3, eps=1e-8, bias_correction1=1 - 0.9 ** (i + 2),
                         bias_correction2_sqrt=(1 - 0.999 ** (i + 2)) ** 0.5, lr_decay=0.5) for i in range(len(sizes))]
    order = [0, 1, 2, 3, 4, 5, 0]  # parameter 0 twice: its second update must see its first

    def run(reference: bool):
        p = [x.clone() for x in ps]
        st = [[s.clone() for s in ss] for ss in states]
        skipped = [torch.zeros((), dtype=torch.int64) for _ in sizes]
        args = (rule, [p[i] for i in order], [gs[i] for i in order], [st[i] for i in order], [[]] * len(order),
                [[]] * len(order), [hypers[i] for i in order])
        kw = dict(wd_mode=WD_DECOUPLED, blocksizes=[2048] * len(order), seeds=[[-1] * k] * len(order),
                  skipped=[skipped[i] for i in order])
        if reference:
            with reference_only():
                optimizer_update_many(*args, **kw)
            return p, st, skipped
        before = torch.get_num_threads()

        def no_reference(*a, **kw):
            raise AssertionError("the native kernel declined a parameter it takes")

        try:
            torch.set_num_threads(threads)
            with monkeypatch.context() as m:
                m.setattr(K, "optimizer_update_reference", no_reference)
                optimizer_update_many(*args, **kw)
        finally:
            torch.set_num_threads(before)
        return p, st, skipped

    native_out, reference_out = run(False), run(True)
    for i in range(len(sizes)):
        assert torch.equal(native_out[0][i], reference_out[0][i]), f"parameter {i}"
        for j in range(k):
            assert torch.equal(native_out[1][i][j], reference_out[1][i][j]), (i, j)
    assert [int(s) for s in native_out[2]] == [int(s) for s in reference_out[2]] == [0, 0, 0, 1, 1, 0]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns (NaNs compare by their bits)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _update_many(monkeypatch, reference: bool, *args, **kw) -> None:
    """``optimizer_update_many(*args, **kw)`` with the references forced (``reference``), or with the native kernel
    only: the reference is made to fail, so nothing may fall back to it."""
    import eightbit.kernels.cpu.optimizer as K

    if reference:
        with reference_only():
            optimizer_update_many(*args, **kw)
        return
    with monkeypatch.context() as m:
        m.setattr(K, "optimizer_update_reference", lambda *a, **k: pytest.fail("the reference ran"))
        optimizer_update_many(*args, **kw)


def _mismatches(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Indices where a and b differ in their bits, except that two float16 NaNs match: torch's own float16 casts
    give a NaN different payloads depending on the tensor's size (all-ones from a 5-value tensor, the F16C
    payload from a 45-value one), so only bfloat16 and float32 NaN bits are pinned."""
    differ = _bits(a) != _bits(b)
    if a.dtype == torch.float16:
        differ &= ~(torch.isnan(a) & torch.isnan(b))
    return differ.nonzero()[:, 0]


@pytest.mark.parametrize("rule,k", [("adam", 2), ("momentum", 1), ("rmsprop", 1), ("adagrad", 1), ("lion", 1),
                                    ("ademamix", 3)])
@pytest.mark.parametrize("eight", [True, False])
def test_low_precision_parameters_equal_the_reference(lib, gen, monkeypatch, rule, k, eight):
    """bf16 and fp16 parameters and gradients, in every combination with float32, are widened block by block into
    float32 scratch inside the kernel and the parameter rounded back: parameters (bit patterns, NaNs included),
    states and skip counts bit-identical to the reference (float32 update, one rounding by torch's cast). The cases
    take every pass: block sizes 2048 and 256 (folded decode tables), 100 (the generic per-element path) and 4096
    (32-bit states in runs of one block); partial last blocks; NaN/Inf gradient blocks (left untouched, NaN
    parameters there keep their bits) and a NaN parameter in a stepped block (rounded as torch rounds NaN); fp16
    parameters near 65504 that overflow to Inf and ones that become subnormal; stochastic rounding keyed on the
    element's place. The reference is made to fail in the native run, so none may fall back to it."""
    from eightbit.functional.codes import binary_codebook

    bf, hf, f32 = torch.bfloat16, torch.float16, torch.float32
    cases = [(bf, bf, 2048 * 67 + 5, 2048), (hf, hf, 4096 + 17, 2048), (bf, f32, 2048 * 5 + 100, 2048),
             (f32, bf, 256 * 9 + 3, 256), (hf, bf, 256 * 8, 256), (hf, f32, 100 * 7 + 33, 100),
             (bf, hf, 4096 * 3 + 1, 4096)]
    ps = [(torch.randn(n, generator=gen) * 0.5).to(dt) for dt, _, n, _ in cases]
    gs = [(torch.randn(n, generator=gen) * 0.01).to(gd) for _, gd, n, _ in cases]
    gs[0][2048 * 40 + 77] = float("nan")  # a block in the middle
    ps[0][2048 * 40 + 5] = float("nan")  # ... whose NaN parameter keeps its bits (skipped)
    ps[0][2048 * 41 + 5] = float("nan")  # a NaN parameter in a stepped block
    gs[1][-1] = float("inf")  # the partial last block
    ps[1][:64] = 65504.0 * torch.tensor([1.0, -1.0]).repeat(32)  # steps beyond the largest fp16 become +-Inf
    gs[1][:64] = -1.0 * torch.tensor([1.0, -1.0]).repeat(32)
    ps[5][:200] = torch.linspace(-6e-5, 6e-5, 200)  # fp16 subnormals, in small steps
    gs[4][256 * 3 + 1] = float("-inf")
    gs[3][256 * 5 + 9] = float("nan")  # float32 parameters written in place beside a bf16 gradient: restored
    signed = {"adam": [True, False], "momentum": [True], "lion": [True], "rmsprop": [False], "adagrad": [False],
              "ademamix": [True, True, False]}[rule]
    codes = [binary_codebook(sg).values for sg in signed]
    states, absmaxes = [], []
    for _, _, n, bs in cases:
        nb = -(-n // bs)
        if eight:
            states.append([torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8) for _ in range(k)])
            # mostly powers of two (the scales the optimizers keep: decoding folds them into its tables, and Adam's
            # folded pass reads and writes bf16/fp16 directly), some not (the passes on float32 copies)
            pow2 = 2.0 ** torch.randint(-16, -8, (nb,), generator=gen).float()
            absmaxes.append([torch.where(torch.rand(nb, generator=gen) < 0.7, pow2, torch.rand(nb, generator=gen) * 1e-3)
                             for _ in range(k)])
        else:
            states.append([torch.rand(n, generator=gen) * 1e-4 for _ in range(k)])
            absmaxes.append([])
    h = OptimHyper(lr=1e-1, weight_decay=0.01, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3,
                   eps=1e-8, bias_correction1=0.19, bias_correction2_sqrt=0.0447, lr_decay=0.5, beta3=0.9999,
                   one_minus_beta3=1e-4, alpha=5.0)
    hypers = [h] * len(cases)
    hypers[1] = dataclasses.replace(h, lr=1e3, weight_decay=0.0)  # overflow
    hypers[5] = dataclasses.replace(h, lr=1e-4)  # subnormals
    seeds = [[-1 if sg else step_seed(3, i) for i, sg in enumerate(signed)] for _ in cases]  # unsigned: stochastic

    def step(reference: bool):
        p = [x.clone() for x in ps]
        st = [[s.clone() for s in ss] for ss in states]
        am = [[a.clone() for a in aa] for aa in absmaxes]
        skipped = [torch.zeros((), dtype=torch.int64) for _ in cases]
        args = (rule, p, gs, st, am, [codes if eight else [] for _ in cases], hypers)
        kw = dict(wd_mode=WD_DECOUPLED, blocksizes=[bs for *_, bs in cases],
                  seeds=seeds if eight else [[-1] * k] * len(cases), skipped=skipped)
        _update_many(monkeypatch, reference, *args, **kw)
        return p, st, am, skipped

    native, ref = step(False), step(True)
    for i in range(len(cases)):
        assert native[0][i].dtype == cases[i][0] and len(_mismatches(native[0][i], ref[0][i])) == 0, i
        assert not torch.equal(native[0][i], ps[i]), i  # it stepped
        for j in range(k):
            assert torch.equal(_bits(native[1][i][j]), _bits(ref[1][i][j])), (i, j)
            if eight:
                assert torch.equal(native[2][i][j], ref[2][i][j]), (i, j)
    assert _bits(native[0][0])[2048 * 40 + 5] == _bits(ps[0])[2048 * 40 + 5]  # untouched in a skipped block
    assert torch.equal(native[0][3][256 * 5 : 256 * 6], ps[3][256 * 5 : 256 * 6])
    assert torch.isnan(native[0][0][2048 * 41 + 5])
    assert torch.isinf(native[0][1][:64]).any()  # lr 1e3 moves +-65504 by >= 100 (>= 0.1 per step) past 65520
    sub = native[0][5][:200].float().abs()
    assert ((sub > 0) & (sub < 2.0**-14)).any()  # 18-200 of the 200 are subnormal, per rule, over seeds 0-39
    assert [int(s) for s in native[3]] == [int(s) for s in ref[3]] == [1, 1, 0, 1, 1, 0, 0]


def _specials32() -> torch.Tensor:
    """float32 bit patterns around every rounding boundary of bf16 and fp16: ties (even and odd), one ulp either
    side, the fp16 overflow threshold (65520) and subnormal range, float32 subnormals, Infs, NaNs with payloads."""
    base = torch.tensor([0x3F800000, 0x3F808000, 0x3F818000, 0x3F801000, 0x3F803000, 0x477FE000, 0x477FF000,
                         0x477FEFFF, 0x7F7FFFFF, 0x7F7F8000, 0x38800000, 0x387FF000, 0x33800000, 0x33000000,
                         0x33000001, 0x32FFFFFF, 0x33C00000, 0x00000001, 0x007FFFFF, 0x00800000, 0x7F800000,
                         0x7FC00000, 0x7F800001, 0x7FA00000, 0x7FFFFFFF, 0x7FC01234, 0x00000000],
                        dtype=torch.int64)
    near = (base.unsqueeze(1) + torch.arange(-2, 3)).reshape(-1).clamp(0, 0x7FFFFFFF)
    both = torch.cat([near, near | 0x80000000])
    return torch.where(both >= 2**31, both - 2**32, both).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_casts_are_torchs(lib, gen, monkeypatch, dtype):
    """The kernel's own widening and rounding (csrc/lowp.h, vector and scalar code) give torch's casts bit for bit.
    Momentum with beta 0, gradient factor 1, lr 1 and a zero parameter writes p = -g rounded to the parameter's
    dtype, so float32 gradients with every boundary pattern (and 20,000 random bit patterns) test the rounding; a
    zero step over a parameter holding all 65,536 bit patterns of the dtype tests widening and rounding back
    (a NaN stays NaN; bfloat16's become 0xFFFF as in torch). Block size 15 with skip counting rounds block by block: scalar code
    for every value (NaN gradient blocks are then skipped, and the unskipped run covers them)."""

    rand = torch.randint(-2**31, 2**31 - 1, (20000,), generator=gen, dtype=torch.int64).to(torch.int32)
    grads = torch.cat([_specials32(), rand.view(torch.float32)])
    every = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    h = OptimHyper(lr=1.0, beta1=0.0, one_minus_beta1=1.0)
    zero_step = OptimHyper(lr=0.0, beta1=0.0, one_minus_beta1=1.0)
    cases = [(torch.zeros(len(grads), dtype=dtype), grads, h), (every.clone(), torch.zeros(len(every)), zero_step)]
    for bs, count in [(2048, False), (15, True)]:
        for p0, g, hyper in cases:
            out = []
            for reference in (False, True):
                p, st = p0.clone(), [torch.zeros(len(p0))]
                kw = dict(wd_mode=0, blocksizes=[bs], seeds=[[-1]],
                          skipped=[torch.zeros((), dtype=torch.int64)] if count else None)
                _update_many(monkeypatch, reference, "momentum", [p], [g], [st], [[]], [[]], [hyper], **kw)
                out.append(p)
            bad = _mismatches(*out)[:5]
            assert len(bad) == 0, (bs, [(hex(int(_bits(p0)[i])), float(g[i]), hex(int(_bits(out[0])[i])),
                                         hex(int(_bits(out[1])[i]))) for i in bad])
