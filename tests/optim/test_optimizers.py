"""8-bit optimizers: parity with 32-bit on two small tasks, state precision, state_dict round trip,
non-finite gradients, construction checks, overrides, dtypes, memory, fused == eager."""

import pytest
import torch
from safetensors.torch import load, save

import eightbit.optim as O
from eightbit.kernels import reference_only
from eightbit.models.parity import PARITY_CASES as CASES
from eightbit.models.parity import tail_mean, train_lm, train_mlp



def _assert_uint8_state(opt):
    big = [p for g in opt.param_groups for p in g["params"] if p.numel() >= 4096]
    assert big
    for p in big:
        tensors = [v for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.shape == p.shape]
        assert tensors and all(t.dtype == torch.uint8 for t in tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_32bit(name, seed):
    cls8, ref, kw = CASES[name]
    opts = []

    def make8(p):
        opts.append(cls8(p, **kw))
        return opts[-1]

    lm8 = train_lm(make8, steps=150, seed=seed % 1000)
    _assert_uint8_state(opts[-1])
    lm32 = train_lm(lambda p: ref(p, **kw), steps=150, seed=seed % 1000)
    mlp8 = train_mlp(make8, steps=150, seed=seed % 1000)
    _assert_uint8_state(opts[-1])
    mlp32 = train_mlp(lambda p: ref(p, **kw), steps=150, seed=seed % 1000)
    assert lm8[-1] < 0.5 * lm8[0] and mlp8[-1] < mlp8[0]  # it trains
    for a, b in ((lm8, lm32), (mlp8, mlp32)):
        assert _tracks(a, b), (tail_mean(a), tail_mean(b))


def _tracks(a: list[float], b: list[float], rel: float = 0.02, max_lag: int = 20) -> bool:
    """Whether loss curve ``a`` ends within ``rel`` of ``b``'s final loss (tail means), allowing either curve to
    be up to ``max_lag`` steps behind the other. Why the lag: on some seeds the MLP sits on its initial plateau
    for 30-40 steps and is still descending steeply at step 150, so a run that leaves the plateau a few steps
    later ends several percent higher on the same curve. LAMB8bit leaves it later than LAMB32bit on such seeds
    (400 seeds: 7 ended 2.5-4.1 % apart, with the decimal map as with the binary one; each within 2 % at a lag of
    3-14 steps). In the flat part of a curve a lag changes nothing, so a real loss gap still fails."""
    for k in range(-max_lag, max_lag + 1):
        ta = tail_mean(a[: len(a) - k] if k > 0 else a)
        tb = tail_mean(b[: len(b) + k] if k < 0 else b)
        if abs(ta - tb) <= rel * tail_mean(b):
            return True
    return False


def test_tracks_allows_a_lag_not_a_gap():
    steep = [2.3 - 0.005 * i for i in range(150)]
    assert _tracks(steep[:10] + steep[:-10], steep)  # the same curve 10 steps late
    assert not _tracks(steep[:40] + steep[:-40], steep)  # 40 steps late
    flat = [1.0 + 0.5 * 0.9**i for i in range(150)]
    assert not _tracks([x * 1.05 for x in flat], flat)  # 5 % higher where the curve is flat: no lag explains it
    assert _tracks([x * 1.01 for x in flat], flat)


@pytest.mark.parametrize("cls", [O.Adam32bit, O.AdamW32bit, O.SGD32bit, O.RMSprop32bit, O.Adagrad32bit])
def test_32bit_variant_matches_torch(cls, gen):
    ref = getattr(torch.optim, cls.__name__[:-5])
    kw = dict(lr=1e-2, weight_decay=0.1) | (dict(momentum=0.9, nesterov=True) if cls is O.SGD32bit else {})
    p1 = torch.nn.Parameter(torch.randn(5000, generator=gen))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = cls([p1], **kw), ref([p2], **kw)
    for _ in range(20):
        g = torch.randn(5000, generator=gen)
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_state_kinds_and_small_tensors():
    w, b = torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(100))
    opt = O.Adam8bit([w, b], lr=1e-3)
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    opt.step()
    s = opt.state[w]
    assert s["state1"].dtype == s["state2"].dtype == torch.uint8 and "exp_avg" not in s
    assert s["absmax1"].shape == (4,) and s["qmap1"].shape == (256,) and s["blocksize"] == 2048
    # unsigned code for v: every code index of v maps to a value >= 0
    assert opt.state[b]["exp_avg"].dtype == torch.float32  # 100 < min_8bit_size
    opt2 = O.Adam([w], lr=1e-3, optim_bits=32)
    opt2.step()
    assert opt2.state[w]["exp_avg"].dtype == torch.float32


def test_state_dict_leaves_the_live_state_alone(gen):
    """``state_dict()`` gives each parameter's code maps as copies (for safetensors) without touching the optimizer's
    own state: its parameters keep sharing the one code map per state (the native tables are built once), and
    changing the returned entries changes nothing live. It once swapped the live maps for the copies, so every
    checkpoint save cost each parameter a rebuild of its tables and a later step ran on the copies."""
    ps = [torch.nn.Parameter(torch.randn(5000, generator=gen)) for _ in range(2)]
    opt = O.AdamW8bit(ps, lr=1e-3)
    for p in ps:
        p.grad = torch.randn(5000, generator=gen)
    opt.step()
    live = {id(p): dict(opt.state[p]) for p in ps}
    sd = opt.state_dict()
    assert sd["state"][0]["qmap1"] is not opt.state[ps[0]]["qmap1"]
    assert torch.equal(sd["state"][0]["qmap1"], opt.state[ps[0]]["qmap1"])
    sd["state"][0]["absmax1"] = torch.zeros(3)
    sd["state"][1].clear()
    for p in ps:
        assert opt.state[p].keys() == live[id(p)].keys()
        assert all(opt.state[p][k] is v for k, v in live[id(p)].items())
    assert opt.state[ps[0]]["qmap1"] is opt.state[ps[1]]["qmap1"] and opt.state[ps[0]]["qmap2"] is opt.state[ps[1]]["qmap2"]


@pytest.mark.parametrize("code", ["binary", "dynamic"])
def test_deepcopy_of_an_optimizer_steps_on_its_own(code, gen):
    """``copy.deepcopy(optimizer)`` mid-training (EMA/SWA helpers and some trainers do it) gives an independent
    optimizer: both, fed the same gradients, step bit-identically, and stepping the copy leaves the original's
    state alone. It failed once: the code maps' cached kernel tables hold ctypes pointers, which cannot be copied."""
    import copy

    ps = [torch.nn.Parameter(torch.randn(5000, generator=gen)), torch.nn.Parameter(torch.randn(10, generator=gen))]
    opt = O.AdamW8bit(ps, lr=1e-3, state_code=code)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    twin = copy.deepcopy(opt)
    tps = [q for g in twin.param_groups for q in g["params"]]
    assert all(q is not p and torch.equal(q, p) for p, q in zip(ps, tps))
    before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
    for _ in range(3):
        for p, q in zip(ps, tps):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        twin.step()
        after_twin = {k: v.clone() for k, v in opt.state[ps[0]].items()}
        assert all(torch.equal(before[k], v) for k, v in after_twin.items())  # the original did not move
        opt.step()
        before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
        for p, q in zip(ps, tps):
            assert torch.equal(p, q)
            for k, v in opt.state[p].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(twin.state[q][k])), k


def test_state_dict_resume_bit_identical(tmp_path, gen):
    def make_run(steps_before, steps_after, resume):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64))
        opt = O.AdamW8bit(model.parameters(), lr=1e-3, percentile_clipping=90, blocksize=256)
        data = torch.randn(steps_before + steps_after, 16, 64, generator=torch.Generator().manual_seed(1))

        def step(i):
            opt.zero_grad()
            model(data[i]).pow(2).mean().backward()
            opt.step()

        for i in range(steps_before):
            step(i)
        if resume:
            sd = opt.state_dict()
            flat = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items()}
            assert all(isinstance(v, torch.Tensor) for v in flat.values())
            (tmp_path / "opt.safetensors").write_bytes(save(flat))
            msd = {k: v.clone() for k, v in model.state_dict().items()}
            loaded = load((tmp_path / "opt.safetensors").read_bytes())
            state = {}
            for key, v in loaded.items():
                pid, name = key.split(".", 1)
                state.setdefault(int(pid), {})[name] = v
            model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64))
            model.load_state_dict(msd)
            opt = O.AdamW8bit(model.parameters(), lr=1e-3, percentile_clipping=90, blocksize=256)
            opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        for i in range(steps_before, steps_before + steps_after):
            step(i)
        return [p.detach().clone() for p in model.parameters()], opt

    straight, _ = make_run(10, 100, resume=False)
    resumed, opt = make_run(10, 100, resume=True)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert all(v.dtype == torch.uint8 for st in opt.state.values() for k, v in st.items() if k == "state1" and v.numel() >= 4096)


@pytest.mark.parametrize("cls", [O.Adam8bit, O.Lion8bit, O.SGD8bit])
def test_nonfinite_propagate_isolated_to_block(cls, gen):
    p = torch.nn.Parameter(torch.randn(8 * 256, generator=gen))
    kw = dict(momentum=0.9) if cls is O.SGD8bit else {}
    opt = cls([p], lr=1e-3, blocksize=256, nonfinite="propagate", **kw)
    p.grad = torch.randn_like(p)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p_before = p.detach().clone()
    g = torch.randn_like(p)
    ref = cls([torch.nn.Parameter(p_before.clone())], lr=1e-3, blocksize=256, nonfinite="propagate", **kw)
    ref.load_state_dict(opt.state_dict())
    rp = ref.param_groups[0]["params"][0]
    rp.grad = g.clone()
    ref.step()
    g[5 * 256 + 3] = float("nan")
    p.grad = g
    opt.step()
    other = torch.ones(8, dtype=torch.bool)
    other[5] = False
    for k, v in opt.state[p].items():
        if k.startswith("absmax"):
            assert torch.isnan(v[5]) and torch.equal(v[other], ref.state[rp][k][other])
        elif v.shape == p.shape:
            assert torch.equal(v.view(8, 256)[other], ref.state[rp][k].view(8, 256)[other])
    assert torch.equal(p.detach().view(8, 256)[other], rp.detach().view(8, 256)[other])
    assert not torch.equal(before["step"], opt.state[p]["step"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_skip_and_raise(bad, gen):
    p = torch.nn.Parameter(torch.randn(5000, generator=gen))
    q = torch.nn.Parameter(torch.randn(5000, generator=gen))
    opt = O.AdamW8bit([p, q], lr=1e-2, nonfinite="skip")
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    snap = {k: v.clone() for k, v in opt.state[p].items()}
    p_snap, q_snap = p.detach().clone(), q.detach().clone()
    p.grad = torch.randn_like(p)
    p.grad[17] = bad
    q.grad = torch.randn_like(q)
    opt.step()
    assert torch.equal(p.detach(), p_snap)  # skipped: param and all state untouched
    for k, v in snap.items():
        if k != "skipped_steps":
            assert torch.equal(opt.state[p][k], v), k
    assert int(opt.state[p]["skipped_steps"]) == 1 and int(opt.state[p]["skipped_blocks"]) == 0
    assert not torch.equal(q.detach(), q_snap)  # the other parameter still stepped
    opt_r = O.AdamW8bit([p], lr=1e-2, nonfinite="raise")
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt_r.step()


SKIP_BLOCK_CASES = {  # optimizer, its arguments, 8-bit or 32-bit state
    "AdamW8bit": (O.AdamW8bit, {}), "AdamW32bit": (O.AdamW32bit, {}), "Lion8bit": (O.Lion8bit, {}),
    "SGD8bit": (O.SGD8bit, {"momentum": 0.9}), "RMSprop8bit": (O.RMSprop8bit, {}), "Adagrad8bit": (O.Adagrad8bit, {}),
    "AdEMAMix8bit": (O.AdEMAMix8bit, {}),
    "AdamW8bit-decimal": (O.AdamW8bit, {"state_code": "dynamic"}),  # the kernel's generic path (table lookups)
}


@pytest.mark.parametrize("name", list(SKIP_BLOCK_CASES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_skip_block_default(name, bad, gen):
    """The default: a block whose gradient holds a NaN/Inf keeps its values and state, every other block steps
    exactly as with a clean gradient (the kernel and the reference alike), and state["skipped_blocks"] counts."""
    cls, kw = SKIP_BLOCK_CASES[name]
    n, bs = 8 * 256 + 100, 256  # the partial last block (100 values) can be skipped too
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    opt = cls([p], lr=1e-3, blocksize=bs, min_8bit_size=0, **kw)
    p.grad = torch.randn(n, generator=gen)
    opt.step()
    clean = cls([torch.nn.Parameter(p.detach().clone())], lr=1e-3, blocksize=bs, min_8bit_size=0, **kw)
    clean.load_state_dict(opt.state_dict())
    cp = clean.param_groups[0]["params"][0]
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p_before = p.detach().clone()
    g = torch.randn(n, generator=gen)
    cp.grad = g.clone()
    clean.step()
    g[3 * bs + 7], g[8 * bs + 99] = bad, bad
    p.grad = g
    twin = cls([torch.nn.Parameter(p_before.clone())], lr=1e-3, blocksize=bs, min_8bit_size=0, **kw)
    twin.load_state_dict(opt.state_dict())  # the same step under the reference: the kernel must agree
    tp = twin.param_groups[0]["params"][0]
    tp.grad = g.clone()
    with reference_only():
        twin.step()
    opt.step()
    skipped = torch.zeros(n, dtype=torch.bool)
    skipped[3 * bs : 4 * bs] = skipped[8 * bs :] = True
    assert torch.equal(p.detach()[skipped], p_before[skipped])
    assert torch.equal(p.detach()[~skipped], cp.detach()[~skipped])
    assert torch.equal(p.detach(), tp.detach())
    block_skipped = torch.tensor([i in (3, 8) for i in range(9)])
    for k, v in opt.state[p].items():
        assert torch.equal(v, twin.state[tp][k]), k
        if k.startswith("absmax"):
            assert torch.equal(v[block_skipped], before[k][block_skipped]), k
            assert torch.equal(v[~block_skipped], clean.state[cp][k][~block_skipped]), k
        elif isinstance(v, torch.Tensor) and v.shape == p.shape:
            assert torch.equal(v[skipped], before[k][skipped]), k
            assert torch.equal(v[~skipped], clean.state[cp][k][~skipped]), k
    assert int(opt.state[p]["skipped_blocks"]) == 2 and int(opt.state[p]["skipped_steps"]) == 0
    assert int(opt.state[p]["step"]) == 2


@pytest.mark.parametrize("saved", [None, 5, torch.tensor(5, dtype=torch.int32), torch.tensor([5])])
def test_skip_counter_from_a_loaded_state(saved, gen):
    """A state saved without "skipped_blocks" (earlier versions), or with it as an int or another integer dtype,
    steps and counts on: the counter becomes an int64 tensor on the parameter's device."""
    p = torch.nn.Parameter(torch.randn(5000, generator=gen))
    p.grad = torch.randn(5000, generator=gen)
    opt = O.AdamW8bit([p], lr=1e-3)
    opt.step()
    sd = opt.state_dict()
    if saved is None:
        del sd["state"][0]["skipped_blocks"]
    else:
        sd["state"][0]["skipped_blocks"] = saved
    fresh = O.AdamW8bit([p], lr=1e-3)
    fresh.load_state_dict(sd)
    p.grad[3] = float("nan")
    fresh.step()
    counter = fresh.state[p]["skipped_blocks"]
    assert counter.dtype == torch.int64 and int(counter) == (0 if saved is None else 5) + 1
    assert int(fresh.state[p]["step"]) == 2


def _step_and_compare(opt, singles, params, twins, step):
    """One step of the group's optimizer and of each twin's own: parameters and every state entry bit-identical."""
    opt.step()
    for o in singles:
        o.step()
    for p, t, o in zip(params, twins, singles):
        assert torch.equal(p.detach(), t.detach()), step
        for k, v in opt.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o.state[t][k])), (k, step)


@pytest.mark.parametrize("cls,kw", [(O.AdamW8bit, {}), (O.SGD8bit, {"momentum": 0.9}), (O.Lion8bit, {}),
                                    (O.AdamW8bit, {"nonfinite": "skip"})])
def test_batched_step_equals_one_parameter_at_a_time(cls, kw, gen):
    """A group's plain updates run as one optimizer_update_many call per kind of state (8-bit, 32-bit); the result
    is bit-identical to stepping each parameter with its own optimizer (one op call each), NaN blocks included.
    A non-contiguous parameter and one without a gradient take their own paths in the same step."""
    shapes = [(64, 80), (300,), (4096 + 5,), (10,), (128, 40), (7, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(96, 70, generator=gen).t()))  # non-contiguous
    params.append(torch.nn.Parameter(torch.randn(50, generator=gen)))  # never has a gradient
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = cls(params, lr=1e-3, min_8bit_size=2000, **kw)
    singles = [cls([t], lr=1e-3, min_8bit_size=2000, **kw) for t in twins]
    for step in range(4):
        for i, (p, t) in enumerate(zip(params[:-1], twins[:-1])):
            g = torch.randn(p.shape, generator=gen)
            if step == 2 and i == 2:
                g.view(-1)[5] = float("nan")
            p.grad, t.grad = g.clone(), g.clone()
        _step_and_compare(opt, singles, params, twins, step)
    assert not opt.state[params[-1]]


@pytest.mark.parametrize("cls,kw", [(O.AdamW8bit, {}), (O.Adagrad8bit, {}), (O.AdamW8bit, {"percentile_clipping": 50})])
def test_batched_step_shares_per_step_values_only_where_they_agree(cls, kw, gen):
    """A step computes the values its parameters share (hyperparameters per step count and clip scale, seeds per step
    count, the settings-derived plan) once per group. Parameters whose step counts differ (one first gets a
    gradient later), whose percentile-clip scales differ, and one with a GlobalOptimManager override (its own
    plan) each still step bit-identically to an optimizer of their own."""
    shapes = [(64, 80), (4096 + 5,), (300,), (128, 40), (10,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    O.GlobalOptimManager.get_instance().override_config(params[3], "lr", 5e-3)
    opt = cls(params, lr=1e-3, min_8bit_size=2000, **kw)
    singles = [cls([t], lr=5e-3 if i == 3 else 1e-3, min_8bit_size=2000, **kw) for i, t in enumerate(twins)]
    for step in range(5):
        for i, (p, t) in enumerate(zip(params, twins)):
            if i == 1 and step < 2:  # parameter 1 starts two steps late: its step count trails the others'
                p.grad = t.grad = None
                continue
            g = torch.randn(p.shape, generator=gen) * (1 + 3 * i)  # different norms: different clip scales
            p.grad, t.grad = g.clone(), g.clone()
        _step_and_compare(opt, singles, params, twins, step)
    assert int(opt.state[params[1]]["step"]) == 3 and int(opt.state[params[0]]["step"]) == 5


def test_batched_step_with_a_damaged_state_steps_the_others(gen):
    """A damaged state in a batch raises its ValueError after every other prepared parameter has stepped (each then
    runs on its own); nothing is half-updated."""
    ps = [torch.nn.Parameter(torch.randn(4096, generator=gen)) for _ in range(3)]
    ps.append(torch.nn.Parameter(torch.randn(10, generator=gen)))  # a 32-bit batch of its own
    opt = O.AdamW8bit(ps, lr=1e-3, min_8bit_size=1000)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    snap = [p.detach().clone() for p in ps]
    opt.state[ps[1]]["absmax1"] = torch.zeros(5)  # wrong length for 4096 values in blocks of 2048
    with pytest.raises(ValueError, match="absmax"):
        opt.step()
    moved = [not torch.equal(p.detach(), s) for p, s in zip(ps, snap)]
    assert moved == [True, False, True, True]


def test_raw_many_op_rejects_lists_that_disagree(gen):
    from eightbit.functional import ops
    from eightbit.functional.optimizer import OptimHyper
    p, g = [torch.randn(100, generator=gen) for _ in range(2)], [torch.randn(100, generator=gen) for _ in range(2)]
    s = [torch.zeros(100), torch.zeros(100)]
    h = OptimHyper(lr=0.1).as_list() * 2
    with pytest.raises(ValueError, match="optimizer_update_many"):
        ops.optimizer_update_many("momentum", p, g, s, [], [], h, 0, [64], [-1, -1], [])


def test_optimizer_update_many_checks_its_lists(gen):
    from eightbit.functional.optimizer import OptimHyper, optimizer_update_many
    p = [torch.randn(100, generator=gen), torch.randn(50, generator=gen)]
    g = [torch.randn(100, generator=gen), torch.randn(50, generator=gen)]
    s = [[torch.zeros(100)], [torch.zeros(50)]]
    h = [OptimHyper(lr=0.1)] * 2
    with pytest.raises(ValueError, match="seeds must have one entry per parameter"):
        optimizer_update_many("momentum", p, g, s, [[], []], [[], []], h, wd_mode=0, blocksizes=[64, 64], seeds=[[-1]])
    with pytest.raises(ValueError, match="parameter 1"):
        optimizer_update_many("momentum", p, g, [s[0], [torch.zeros(49)]], [[], []], [[], []], h, wd_mode=0,
                              blocksizes=[64, 64], seeds=[[-1], [-1]])
    optimizer_update_many("momentum", p, g, s, [[], []], [[], []], h, wd_mode=0, blocksizes=[64, 64],
                          seeds=[[-1], [-1]])
    assert bool(s[0][0].ne(0).any()) and bool(s[1][0].ne(0).any())


def _step_skips_bad_gradient(opt, p, index: int, bad: float, gen) -> torch.Tensor:
    """A good step, then one whose gradient holds ``bad`` at ``index``: that one must leave the parameter and every
    state entry as they were, the skipped-step counter excepted (1). Returns the parameter as it was."""
    p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    snap, p_snap = {k: v.clone() for k, v in opt.state[p].items()}, p.detach().clone()
    p.grad = torch.randn(p.shape, generator=gen)
    p.grad.view(-1)[index] = bad
    opt.step()
    assert torch.equal(p.detach(), p_snap)
    assert int(opt.state[p]["skipped_steps"]) == 1
    for k, v in snap.items():
        if k != "skipped_steps":
            assert torch.equal(opt.state[p][k], v), k
    return p_snap


def test_nonfinite_skip_block_acts_as_skip_when_norms_come_first(gen):
    """Percentile clipping and LAMB's trust ratio read the whole gradient first: the whole parameter is skipped."""
    for opt_fn in (lambda ps: O.AdamW8bit(ps, lr=1e-3, percentile_clipping=90), lambda ps: O.LAMB8bit(ps, lr=1e-3)):
        p = torch.nn.Parameter(torch.randn(4096, generator=gen))
        _step_skips_bad_gradient(opt_fn([p]), p, 5, float("nan"), gen)


NORM_CASES = {  # optimizers whose step is scaled by its update norm
    "LAMB8bit": lambda ps, **kw: O.LAMB8bit(ps, lr=1e-3, weight_decay=0.01, **kw),
    "LAMB32bit": lambda ps, **kw: O.LAMB32bit(ps, lr=1e-3, **kw),
    "LARS8bit": lambda ps, **kw: O.LARS8bit(ps, lr=1e-2, **kw),
    "Adam8bit-max_unorm": lambda ps, **kw: O.Adam8bit(ps, lr=1e-3, max_unorm=0.01, **kw),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", list(NORM_CASES))
def test_update_norm_tells_when_the_gradient_needs_its_check(name, bad, gen):
    """With an update norm the gradient is not read for a NaN/Inf before the step: any NaN/Inf in it makes the norm
    NaN/Inf (every rule's state takes the gradient times a constant), and only then is it checked. A bad gradient
    skips the whole parameter (step count, state and parameter unchanged; skipped_steps + 1) or raises under
    nonfinite="raise"; a non-finite norm from a finite gradient (here an Inf parameter under LAMB's decay term, or a
    norm overflow) steps as usual."""
    n = 2048 * 3 + 5
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    opt = NORM_CASES[name]([p])
    p_snap = _step_skips_bad_gradient(opt, p, 2048 + 7, bad, gen)
    opt_r = NORM_CASES[name]([p], nonfinite="raise")
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt_r.step()
    p.grad = torch.randn(n, generator=gen)  # finite again: steps
    opt.step()
    assert not torch.equal(p.detach(), p_snap) and int(opt.state[p]["skipped_steps"]) == 1
    if name.startswith("LAMB"):  # the norm is not finite, the gradient is: the step is taken (and counted)
        steps = int(opt.state[p]["step"])
        with torch.no_grad():
            p[3] = float("inf")
        opt.step()
        assert int(opt.state[p]["step"]) == steps + 1 and int(opt.state[p]["skipped_steps"]) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=1e-3, betas=(1.0, 0.9)), "betas"),
        (dict(lr=1e-3, betas=(0.9, -0.1)), "betas"),
        (dict(lr=1e-3, eps=-1e-8), "eps"),
        (dict(lr=1e-3, weight_decay=-0.1), "weight_decay"),
        (dict(lr=1e-3, blocksize=1000), "blocksize"),
        (dict(lr=1e-3, optim_bits=16), "optim_bits"),
        (dict(lr=1e-3, percentile_clipping=0), "percentile_clipping"),
        (dict(lr=1e-3, nonfinite="ignore"), "nonfinite"),
        (dict(lr=1e-3, max_unorm=-1), "max_unorm"),
        (dict(lr=float("nan")), "lr"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        O.Adam8bit([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_other_construction_errors():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="momentum"):
        O.SGD8bit(p, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        O.LARS8bit(p, lr=0.1, momentum=0)
    with pytest.raises(ValueError, match="momentum"):
        O.RMSprop8bit(p, lr=0.1, momentum=0.9)
    # positional arguments bind as in torch and bitsandbytes (betas, eps, weight_decay); options beyond are
    # keyword-only
    opt = O.Adam8bit(p, 1e-3, (0.8, 0.99), 1e-6, 0.1)
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6 and opt.defaults["weight_decay"] == 0.1
    with pytest.raises(TypeError):
        O.Adam8bit(p, 1e-3, (0.9, 0.99), 1e-8, 0.0, False, 8)  # optim_bits is keyword-only
    with pytest.raises(ValueError, match="amsgrad"):
        O.Adam8bit(p, 1e-3, amsgrad=True)
    with pytest.raises(ValueError, match="optim_bits"):
        O.Adam8bit(p, 1e-3, optim_bits=16)
    with pytest.raises(ValueError, match="optim_bits"):
        O.Adam32bit(p, 1e-3, optim_bits=8)


def test_determinism():
    runs = [train_mlp(lambda p: O.Adam8bit(p, lr=3e-3), steps=30, seed=3) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params(dtype, gen):
    w32 = torch.randn(64, 128, generator=gen)
    p = torch.nn.Parameter(w32.to(dtype))
    ref = torch.nn.Parameter(w32.clone())
    opt, opt_ref = O.Adam8bit([p], lr=1e-2), O.Adam8bit([ref], lr=1e-2)
    for _ in range(5):
        g = torch.randn(64, 128, generator=gen)
        p.grad, ref.grad = g.to(dtype), g.to(dtype).float()
        opt.step()
        opt_ref.step()
    assert p.dtype == dtype and opt.state[p]["absmax1"].dtype == torch.float32
    # same math in fp32, only the rounding of the written-back parameter differs
    eps = torch.finfo(dtype).eps  # 5 roundings of half an ulp each at most
    assert torch.all((p.float() - ref).abs() <= 3 * eps * (ref.abs() + 5 * 1e-2))  # |p| may shrink by 5 lr
    assert (p.float() - w32).abs().mean() > 1e-3  # it moved


def test_param_groups_closure_and_no_grad():
    a, b, c = (torch.nn.Parameter(torch.ones(5000)) for _ in range(3))
    opt = O.SGD8bit([{"params": [a], "lr": 0.1}, {"params": [b, c], "lr": 0.01}], lr=0.5, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = (a.sum() + b.sum())
        loss.backward()
        return loss

    assert float(opt.step(closure)) == 10000.0
    assert torch.allclose(a, torch.full_like(a, 0.9), atol=1e-3)
    assert torch.allclose(b, torch.full_like(b, 0.99), atol=1e-4)
    assert torch.equal(c, torch.ones(5000)) and c not in opt.state  # no grad: skipped


def test_global_optim_manager_override_before_and_after():
    mng = O.GlobalOptimManager.get_instance()
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Linear(100, 100))
    mng.register_module_override(model[0], "weight", {"optim_bits": 32})  # before construction
    opt = O.Adam8bit(model.parameters(), lr=1e-3)
    mng.override_config(model[1].weight, "optim_bits", 32)  # after construction, before the first step
    model(torch.randn(4, 100)).sum().backward()
    opt.step()
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.float32
    assert opt.state[model[1].weight]["exp_avg"].dtype == torch.float32
    other = torch.nn.Linear(100, 100)
    opt2 = O.Adam8bit(other.parameters(), lr=1e-3)
    other(torch.randn(4, 100)).sum().backward()
    opt2.step()
    assert opt2.state[other.weight]["state1"].dtype == torch.uint8


def test_percentile_clipping_and_max_unorm(gen):
    p = torch.nn.Parameter(torch.zeros(5000))
    opt = O.SGD8bit([p], lr=1.0, momentum=0.5, percentile_clipping=50)
    for i in range(10):
        p.grad = torch.ones(5000) * (100.0 if i == 9 else 1.0)
        before = p.detach().clone()
        opt.step()
    # the outlier gradient was clipped to the median of past norms
    assert (before - p).abs().max() < 5.0
    p2 = torch.nn.Parameter(torch.ones(5000))
    opt2 = O.Adam32bit([p2], lr=10.0, max_unorm=0.01)
    p2.grad = torch.randn(5000, generator=gen)
    opt2.step()
    assert (p2.detach() - 1).norm() <= 10.0 * 0.01 * 5000**0.5 * 1.001


def test_memory_adam8bit_vs_torch():
    params = [torch.nn.Parameter(torch.zeros(4096, 2560))]  # 10.5M parameters
    for p in params:
        p.grad = torch.zeros_like(p)
    o8, o32 = O.Adam8bit(params, lr=1e-3), torch.optim.Adam(params, lr=1e-3)
    o8.step()
    o32.step()

    def nbytes(opt):
        return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))

    ratio = nbytes(o8) / nbytes(o32)
    print(f"Adam8bit state = {ratio:.4f} of torch Adam's")
    assert ratio <= 0.27


def test_state_dict_round_trip_with_groups_of_different_state_specs(gen):
    """Each parameter's state is read under its own group's settings (group 0 here has no momentum state)."""
    a, b = (torch.nn.Parameter(torch.randn(5000, generator=gen)) for _ in range(2))
    groups = [{"params": [a], "momentum": 0.0}, {"params": [b], "momentum": 0.9}]
    opt = O.SGD8bit(groups, lr=0.1)
    a.grad, b.grad = torch.randn(5000, generator=gen), torch.randn(5000, generator=gen)
    opt.step()
    a2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    opt2 = O.SGD8bit([{"params": [a2], "momentum": 0.0}, {"params": [b2], "momentum": 0.9}], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[b2]["state1"], opt.state[b]["state1"]) and "state1" not in opt2.state[a2]
    for o, ps in ((opt, (a, b)), (opt2, (a2, b2))):
        ps[0].grad, ps[1].grad = torch.ones(5000), torch.ones(5000)
        o.step()
    assert torch.equal(a2, a) and torch.equal(b2, b)


def test_state_code_option_and_checkpoint_keep_their_map():
    from eightbit.functional import create_binary_dynamic_map, create_dynamic_map

    def make(**kw):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 8192))
        return p, O.AdamW8bit([p], lr=1e-3, **kw)

    p, opt = make()
    p.grad = torch.randn(8192)
    opt.step()
    st = opt.state[p]
    assert torch.equal(st["qmap1"], create_binary_dynamic_map(True))
    assert torch.equal(st["qmap2"], create_binary_dynamic_map(False))
    a = st["absmax2"]
    assert torch.equal(torch.exp2(torch.log2(a).round()), a)  # power-of-two block scales
    with pytest.raises(ValueError, match="state_code"):
        make(state_code="decimal")
    # "auto": an unsigned state rounded to nearest keeps the decimal map (it would freeze on power-of-two scales)
    p3, o3 = make(stochastic_rounding=False)
    p3.grad = torch.randn(8192)
    o3.step()
    assert torch.equal(o3.state[p3]["qmap1"], create_binary_dynamic_map(True))
    assert torch.equal(o3.state[p3]["qmap2"], create_dynamic_map(False))
    p4, o4 = make(stochastic_rounding=False, state_code="binary")
    p4.grad = torch.randn(8192)
    with pytest.warns(UserWarning, match="freezes"):  # forced: v rounded to nearest on the binary map
        o4.step()
    assert torch.equal(o4.state[p4]["qmap2"], create_binary_dynamic_map(False))
    # the map is chosen when the state is created: turning stochastic rounding off later warns (once)
    p5, o5 = make()
    p5.grad = torch.randn(8192)
    o5.step()
    o5.param_groups[0]["stochastic_rounding"] = False
    with pytest.warns(UserWarning, match="freezes"):
        o5.step()
    # a checkpoint written with the decimal map continues on it in a default (binary) optimizer
    p1, o1 = make(state_code="dynamic")
    p2, o2 = make()
    for step in range(3):
        g = torch.randn(8192, generator=torch.Generator().manual_seed(step))
        p1.grad = g.clone()
        o1.step()
        if step == 0:
            p2.data.copy_(p1.data)
            o2.load_state_dict(o1.state_dict())
            assert torch.equal(o2.state[p2]["qmap1"], create_dynamic_map(True))
            continue
        p2.grad = g.clone()
        o2.step()
    assert torch.equal(p1, p2) and torch.equal(o1.state[p1]["state2"], o2.state[p2]["state2"])


def test_update_functions_reject_bad_blocksizes_and_weight_decay_modes(gen):
    """A block size that is not a positive int, or an unknown weight-decay mode, is an error naming it in the
    public functions and in raw op calls (which bypass their checks); before, 0 divided by zero and -5 stepped."""
    from eightbit.functional import ops
    from eightbit.functional.optimizer import OptimHyper, optimizer_update, optimizer_update_many, optimizer_update_norm
    p, g = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    s, h = [torch.zeros(100)], OptimHyper(lr=0.1)
    for bs, err in ((0, ValueError), (-5, ValueError), (True, TypeError), (64.0, TypeError)):
        with pytest.raises(err, match="blocksize"):
            optimizer_update("momentum", p, g, s, [], [], h, wd_mode=0, blocksize=bs, seeds=[-1])
        with pytest.raises(err, match="blocksize"):
            optimizer_update_norm("momentum", p, g, s, [], [], h, wd_mode=0, blocksize=bs)
        with pytest.raises(err, match="blocksize"):
            optimizer_update_many("momentum", [p], [g], [s], [[]], [[]], [h], wd_mode=0, blocksizes=[bs], seeds=[[-1]])
    for wd in (3, -1, True):
        with pytest.raises(ValueError, match="wd_mode"):
            optimizer_update("momentum", p, g, s, [], [], h, wd_mode=wd, blocksize=64, seeds=[-1])
        with pytest.raises(ValueError, match="wd_mode"):
            optimizer_update_many("momentum", [p], [g], [s], [[]], [[]], [h], wd_mode=wd, blocksizes=[64], seeds=[[-1]])
    import numpy as np
    optimizer_update("momentum", p, g, s, [], [], h, wd_mode=0, blocksize=np.int64(64), seeds=[-1])  # numpy ints do
    q = torch.nn.Parameter(torch.randn(5000, generator=gen))
    q.grad = torch.randn(5000, generator=gen)
    opt = O.AdamW8bit([q], lr=1e-3, blocksize=np.int64(256))  # and so in the optimizers, stored as an int
    opt.step()
    assert type(opt.param_groups[0]["blocksize"]) is int and opt.state[q]["absmax1"].numel() == -(-5000 // 256)
    before = p.clone()
    for bs, wd in ((-5, 0), (0, 0), (64, 7)):
        with pytest.raises(ValueError, match="blocksize"):
            ops.optimizer_update("momentum", p, g, s, [], [], h.as_list(), wd, bs, [-1], None)
        with pytest.raises(ValueError, match="blocksize"):
            ops.optimizer_update_many("momentum", [p], [g], s, [], [], h.as_list(), wd, [bs], [-1], [])
    assert torch.equal(p, before)


def test_optim_hyper_values_follow_replace():
    """``OptimHyper.as_list`` keeps its values on the instance (a step passes one object for many parameters): a
    ``dataclasses.replace`` copy (LAMB's trust ratio, max_unorm) has its own, and callers cannot change them."""
    import dataclasses

    from eightbit.functional.optimizer import OptimHyper

    h = OptimHyper(lr=0.1, beta1=0.9)
    first = h.as_list()
    first[0] = 123.0
    assert h.as_list()[0] == pytest.approx(0.1)
    r = dataclasses.replace(h, update_scale=0.25)
    assert r.as_list()[3] == 0.25 and h.as_list()[3] == 1.0 and r.as_list()[0] == h.as_list()[0]
    assert r == dataclasses.replace(h, update_scale=0.25) and h != r


def test_lr_as_a_tensor(gen):
    """As torch's optimizers, lr may be a one-element float tensor, read at every step (a scheduler that changes it
    in place takes effect at the next step): the same steps as with the float. Other tensors are refused."""
    p, q = (torch.nn.Parameter(torch.randn(5000, generator=gen)) for _ in range(2))
    q.data.copy_(p.data)
    lr = torch.tensor(1e-3)
    a, b = O.AdamW8bit([p], lr=lr), O.AdamW8bit([q], lr=1e-3)
    for step in range(3):
        if step == 2:
            lr.fill_(5e-4)
            b.param_groups[0]["lr"] = float(torch.tensor(5e-4))  # the float the tensor holds
        g = torch.randn(5000, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
        assert torch.equal(p, q), step
    for bad in (torch.tensor([1e-3, 1e-3]), torch.tensor(1)):
        with pytest.raises(ValueError, match="lr given as a tensor"):
            O.AdamW8bit([p], lr=bad)
    with pytest.raises(ValueError, match="lr"):
        O.AdamW8bit([p], lr=torch.tensor(-1.0))


@pytest.mark.parametrize("cls", [O.AdamW32bit, O.AdamW8bit])
def test_switching_from_torch_adamw_mid_run(cls, gen):
    """A ``torch.optim.AdamW`` checkpoint (step saved as a float tensor) loads into AdamW32bit / AdamW8bit and the run
    goes on as torch's would: the moments carry over (AdamW8bit quantizes them to nearest into its 8-bit layout,
    so the switch takes the memory saving; tensors under min_8bit_size keep 32-bit moments) and so does the step
    count (bias corrections). Over 20 more steps with the same gradients the parameters follow torch's: AdamW32bit to
    float32 rounding, AdamW8bit within 5 % of the distance travelled."""
    ps = [torch.nn.Parameter(torch.randn(64, 128, generator=gen)), torch.nn.Parameter(torch.randn(64, generator=gen))]
    ref = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)
    grads = [[torch.randn(p.shape, generator=gen) for p in ps] for _ in range(25)]
    for g in grads[:5]:
        for p, gi in zip(ps, g):
            p.grad = gi.clone()
        ref.step()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    start = [p.detach().clone() for p in ps]
    opt = cls(twins, lr=1e-3, weight_decay=0.01, min_8bit_size=1000)
    opt.load_state_dict(ref.state_dict())
    st = opt.state[twins[0]]
    assert int(st["step"]) == 5 and st["step"].dtype == torch.int64
    assert (st["state1"].dtype == torch.uint8) if cls is O.AdamW8bit else (st["exp_avg"].dtype == torch.float32)
    assert opt.state[twins[1]]["exp_avg"].dtype == torch.float32  # 64 values: 32-bit in both
    for g in grads[5:]:
        for p, q, gi in zip(ps, twins, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        ref.step()
        opt.step()
    assert int(opt.state[twins[0]]["step"]) == 25
    for p, q, s in zip(ps, twins, start):
        if cls is O.AdamW32bit:
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        else:
            assert float((q - p).norm() / (p - s).norm()) < 0.05


@pytest.mark.parametrize("name", ["AdamW", "Lion", "AdEMAMix"])
def test_fixed_width_classes_keep_their_state_width_on_load(name, gen):
    """``<Name>32bit`` loading an 8-bit checkpoint keeps 32-bit state (each moment dequantized: the exact values the
    8-bit state stood for) and ``<Name>8bit`` loading a 32-bit one keeps 8-bit state (quantized to nearest); before,
    the saved group's ``optim_bits`` won and the class silently ran the other width. The generic class follows the
    checkpoint, as torch's loader does."""
    from eightbit.functional.blockwise import dequantize_blockwise
    eight_cls, f32_cls, generic = (getattr(O, name + suffix) for suffix in ("8bit", "32bit", ""))
    p = torch.nn.Parameter(torch.randn(70, 100, generator=gen))
    for src_cls, dst_cls in ((eight_cls, f32_cls), (f32_cls, eight_cls)):
        src = src_cls([p], lr=1e-3)
        for _ in range(3):
            p.grad = torch.randn(p.shape, generator=gen)
            src.step()
        q = torch.nn.Parameter(p.detach().clone())
        dst = dst_cls([q], lr=1e-3)
        dst.load_state_dict(src.state_dict())
        st, saved = dst.state[q], src.state[p]
        assert dst.param_groups[0]["optim_bits"] == dst_cls.fixed_bits and int(st["step"]) == 3
        names = [n for n, _ in dst.state_spec(dst.param_groups[0])]
        if dst_cls is f32_cls:
            assert "state1" not in st and "blocksize" not in st
            for i, n in enumerate(names):
                want = dequantize_blockwise(saved[f"state{i + 1}"], absmax=saved[f"absmax{i + 1}"],
                                            code=saved[f"qmap{i + 1}"], blocksize=int(saved["blocksize"]))
                assert st[n].dtype == torch.float32 and torch.equal(st[n], want.view(p.shape)), n
        else:
            assert all(st[f"state{i + 1}"].dtype == torch.uint8 for i in range(len(names))) and names[0] not in st
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()
        dst.step()  # and it steps
        assert torch.isfinite(q).all() and not torch.equal(q, p)
    follower = generic([torch.nn.Parameter(p.detach().clone())], lr=1e-3, optim_bits=32)
    follower.load_state_dict(eight_cls([p], lr=1e-3).state_dict())
    assert follower.param_groups[0]["optim_bits"] == 8


@pytest.mark.parametrize("bad", [1.5, -1, float("nan"), torch.tensor(2.5), torch.tensor([1.0, 2.0])])
def test_loaded_step_counts_must_be_whole(bad, gen):
    """A loaded step count may be an int or a whole-valued tensor of any dtype (torch's optimizers save float32
    ones); a fractional, negative, NaN or multi-element one is a ValueError naming it, and nothing is loaded."""
    p = torch.nn.Parameter(torch.randn(100, generator=gen))
    t = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(100, generator=gen)
    t.step()
    sd = t.state_dict()
    sd["state"][0]["step"] = bad
    opt = O.AdamW32bit([p], lr=1e-3)
    with pytest.raises(ValueError, match="'step'.*integer count"):
        opt.load_state_dict(sd)
    assert not opt.state[p]


@pytest.mark.parametrize("name", list(SKIP_BLOCK_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skip_block_skips_a_finite_gradient_whose_state_overflows(name, dtype, gen):
    """A finite gradient can still make a new state Inf (its square overflows float32). With 8-bit states the
    block's scale would be Inf and every code of the block NaN from the next step on, so under "skip_block" that
    block is skipped and counted like a block with a NaN gradient (before, it was stepped and poisoned); the
    kernel and the reference agree bit for bit, and the next step, with a sane gradient, is finite everywhere.
    32-bit states are per element (an Inf v gives that element a zero step and poisons nothing): the block steps.
    Float32 and bf16 parameters (the passes read and write them in place either way)."""
    cls, kw = SKIP_BLOCK_CASES[name]
    eight = "32bit" not in name
    n, bs = 6 * 256, 256
    p0 = torch.randn(n, generator=gen).to(dtype)
    opt = cls([torch.nn.Parameter(p0.clone())], lr=1e-3, blocksize=bs, min_8bit_size=0, **kw)
    twin = cls([torch.nn.Parameter(p0.clone())], lr=1e-3, blocksize=bs, min_8bit_size=0, **kw)
    g = (torch.randn(n, generator=gen) * 0.01).to(dtype)
    g[2 * bs + 5] = 3e38  # finite: its square overflows (and for Lion and SGD, 3e38 * beta overflows nothing)
    g[4 * bs + 9] = float("nan")
    for o, ref in ((opt, False), (twin, True)):
        q = o.param_groups[0]["params"][0]
        q.grad = g.clone()
        if ref:
            with reference_only():
                o.step()
        else:
            o.step()
    p, tp = opt.param_groups[0]["params"][0], twin.param_groups[0]["params"][0]
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(p.detach().view(bits), tp.detach().view(bits))
    for k, v in opt.state[p].items():
        assert torch.equal(v, twin.state[tp][k]), k  # no NaN anywhere now
    overflows = eight and name not in ("SGD8bit", "Lion8bit")  # their states are linear in g: no square
    assert torch.equal(p.detach()[2 * bs : 3 * bs], p0[2 * bs : 3 * bs]) == overflows
    assert torch.equal(p.detach()[4 * bs : 5 * bs], p0[4 * bs : 5 * bs])  # the NaN block: skipped
    assert int(opt.state[p]["skipped_blocks"]) == int(twin.state[tp]["skipped_blocks"]) == 1 + overflows
    p.grad = (torch.randn(n, generator=gen) * 0.01).to(dtype)
    opt.step()
    assert torch.isfinite(p.detach()).all()
    if eight:  # (a 32-bit v keeps its Inf element, which only zeroes that element's steps)
        assert all(torch.isfinite(v).all() for v in opt.state[p].values() if v.is_floating_point())


@pytest.mark.parametrize("name,kw", [
    ("Adam8bit", {}), ("AdamW8bit", {}), ("AdEMAMix8bit", {}),
    ("Adam8bit", {"blocksize": 256, "stochastic_rounding": False, "state_code": "dynamic"}),  # bitsandbytes' way
])
@pytest.mark.parametrize("native", [True, False])
def test_a_second_moment_below_its_map_never_decodes_to_zero(name, kw, native):
    """An element whose gradient is tiny beside its block's largest one (here 1e-4 against 1) has a second moment
    below the smallest code of v's map. Decoded as 0, the next steps divided its first moment by eps alone and
    moved it by thousands of lr. A positive state on an unsigned map now keeps at least the smallest positive code,
    so each step stays within Adam's bound (about lr), and a state that is exactly 0 stays 0."""
    lr, n = 1e-3, 4096
    p = torch.nn.Parameter(torch.zeros(n))
    opt = getattr(O, name)([p], lr=lr, **kw)
    moves = []
    for step in range(6):
        g = torch.zeros(n)
        g[0] = 1.0  # the block's large gradient
        if step == 0:
            g[1] = 1e-4  # once, then nothing: Adam's steps for it decay from lr
        before = p.detach().clone()
        p.grad = g
        if native:
            opt.step()
        else:
            with reference_only():
                opt.step()
        moves.append(float((p.detach()[1] - before[1]).abs()) / lr)
    assert max(moves) <= 1.5, moves
    assert torch.equal(p.detach()[2:], torch.zeros(n - 2))  # never a gradient: never moved
    v = opt.state[p].get("state2")
    if v is not None and name != "AdEMAMix8bit":
        code = opt.state[p]["qmap2"]
        assert code[int(v[1])] > 0 and code[int(v[2])] == 0


def test_numpy_scalars_and_one_element_tensors_are_numbers():
    """Hyperparameters given as NumPy scalars or one-element tensors (as torch.optim takes them) are accepted and
    step like the same floats; bools, strings, complex numbers and longer tensors still raise, naming the argument."""
    import numpy as np

    p0 = torch.randn(300)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa = O.AdamW8bit([a], lr=np.float32(1e-3), weight_decay=np.int64(0), eps=np.float64(1e-8),
                     betas=(torch.tensor(0.9), np.float32(0.999)), min_8bit_size=0)
    ob = O.AdamW8bit([b], lr=float(np.float32(1e-3)), weight_decay=0.0, eps=1e-8,
                     betas=(float(torch.tensor(0.9)), float(np.float32(0.999))),
                     min_8bit_size=0)
    g = torch.randn(300)
    for p, o in ((a, oa), (b, ob)):
        p.grad = g.clone()
        o.step()
    assert torch.equal(a.detach(), b.detach())
    for bad in (True, np.bool_(True), "1e-3", 1j):
        with pytest.raises(TypeError, match="lr must be a number"):
            O.AdamW8bit([a], lr=bad)
    with pytest.raises(TypeError, match="weight_decay"):
        O.AdamW8bit([a], lr=1e-3, weight_decay=torch.zeros(2))


@pytest.mark.parametrize("betas", [(0.0, 0.999, 0.9999), (0.9, 0.999, 0.0)])
def test_ademamix_beta3_schedule_needs_positive_betas(betas):
    """The t_beta3 schedule interpolates log(beta1) and log(beta3): a zero beta there is refused at construction
    with a ValueError naming betas (it raised "math domain error" at the first step); without t_beta3 it is fine."""
    p = torch.nn.Parameter(torch.randn(300))
    with pytest.raises(ValueError, match="betas"):
        O.AdEMAMix8bit([p], betas=betas, t_beta3=100)
    o = O.AdEMAMix8bit([p], betas=betas)
    p.grad = torch.randn(300)
    o.step()
    assert torch.isfinite(p.detach()).all()


def test_torch_checkpoints_without_step_or_gnorm_history_load():
    """torch's SGD saves only momentum_buffer (no step), and no torch optimizer saves a percentile-clipping history:
    both load (SGD8bit from torch.optim.SGD, AdamW8bit with percentile_clipping from torch.optim.AdamW, the history
    starting afresh) and step; an Adam state without its step is still refused."""
    p = torch.nn.Parameter(torch.randn(5000))
    t = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(5000)
    t.step()
    s = O.SGD8bit([p], lr=0.1, momentum=0.9)
    s.load_state_dict(t.state_dict())
    s.step()
    a = torch.optim.AdamW([p], lr=1e-3)
    a.step()
    o = O.AdamW8bit([p], lr=1e-3, percentile_clipping=95)
    o.load_state_dict(a.state_dict())
    assert torch.equal(o.state[p]["gnorm_history"], torch.zeros(100))
    o.step()
    bad = a.state_dict()
    del bad["state"][0]["step"]
    with pytest.raises(ValueError, match="missing entries \\['step'\\]"):
        O.AdamW8bit([p], lr=1e-3).load_state_dict(bad)


@pytest.mark.parametrize("cls", [O.SGD8bit, O.SGD32bit])
def test_settings_changed_mid_run_refit_the_state(cls):
    """Turning momentum on after steps without it (torch.optim.SGD allows this), or percentile clipping on or off,
    used to raise KeyError at the next step; the state now gains the entries the new settings need (zero momentum,
    an empty history) and drops the ones they no longer use, so steps and a state_dict round trip both work."""
    p = torch.nn.Parameter(torch.randn(5000))
    o = cls([p], lr=0.1)
    for momentum, clip in ((0.0, 100), (0.9, 100), (0.9, 95), (0.0, 95), (0.0, 100)):
        o.param_groups[0]["momentum"] = momentum
        o.param_groups[0]["percentile_clipping"] = clip
        p.grad = torch.randn(5000)
        o.step()
        assert torch.isfinite(p.detach()).all()
        o.load_state_dict(o.state_dict())  # the state matches the settings
        assert ("gnorm_history" in o.state[p]) == (clip < 100)
    a = torch.nn.Parameter(torch.randn(5000))
    oa = O.AdamW8bit([a], lr=1e-3)
    a.grad = torch.randn(5000)
    oa.step()
    oa.param_groups[0]["percentile_clipping"] = 95
    oa.step()
    assert int(oa.state[a]["step"]) == 2 and "gnorm_history" in oa.state[a]
