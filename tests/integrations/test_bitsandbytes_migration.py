"""Every row of docs/migrating_from_bitsandbytes.md through the public API: bitsandbytes code with the import
changed runs, binds its arguments the same way, loads bitsandbytes' checkpoints, and gives bitsandbytes' results
(to the stated tolerance) -- compared against bitsandbytes itself, which runs on CPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import eightbit.functional as F
import eightbit.nn as enn
import eightbit.optim as O

bnb = pytest.importorskip("bitsandbytes")


def _ref_linear(x, w_int8, scb, bias):
    """float64 LLM.int8() ground truth: the product with the dequantized int8 weight."""
    w = w_int8.double() * (scb.double().unsqueeze(1) / 127)
    return x.double() @ w.T + bias.double()


# ---------------------------------------------------------------- Linear8bitLt
def test_linear8bitlt_bitsandbytes_loading_flow():
    """Linear8bitLt(..., has_fp16_weights=False, threshold=6.0) -> load_state_dict(float) -> .to(device) -> forward."""
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32))
    int8 = nn.Sequential(enn.Linear8bitLt(64, 64, has_fp16_weights=False, threshold=6.0),
                         enn.Linear8bitLt(64, 32, True, False, 6.0))  # positional as bitsandbytes
    assert not int8[0].is_quantized or int8[0].weight_int8.abs().sum() == 0  # zero-initialized int8 until loaded
    int8.load_state_dict(fp.state_dict())
    int8 = int8.to("cpu")
    assert all(m.is_quantized and m.weight.dtype == torch.int8 for m in int8)
    assert "weights=int8" in repr(int8[0])
    x = torch.randn(5, 64)
    x[:, 3] = 10.0  # an outlier column
    rel = float((int8(x) - fp(x)).norm() / fp(x).norm())
    assert rel < 0.02, rel


def test_linear8bitlt_loads_bitsandbytes_checkpoint_and_matches_it():
    torch.manual_seed(1)
    lin = nn.Linear(96, 48)
    ref = bnb.nn.Linear8bitLt(96, 48, has_fp16_weights=False, threshold=6.0)
    ref.load_state_dict(lin.state_dict())
    ref = ref.to("cpu")  # bitsandbytes quantizes here
    sd = ref.state_dict()
    assert {"weight", "SCB", "weight_format"} <= set(sd) and sd["weight"].dtype == torch.int8
    ours = enn.Linear8bitLt(96, 48, has_fp16_weights=False, threshold=6.0)
    ours.load_state_dict(sd)
    assert torch.equal(ours.weight_int8, sd["weight"]) and torch.equal(ours.weight_absmax, sd["SCB"].float())
    x = torch.randn(7, 96)
    x[:, [5, 40]] *= 20
    truth = _ref_linear(x, sd["weight"], sd["SCB"], lin.bias.detach())
    # bitsandbytes' CPU path multiplies by the dequantized weight in float (its error vs truth is ~1e-7);
    # eightbit runs LLM.int8() proper (int8 activations too): vector-wise activation error, ~0.3 % here
    err_bnb = float((ref(x).double() - truth).norm() / truth.norm())
    err_ours = float((ours(x).double() - truth).norm() / truth.norm())
    assert err_bnb < 1e-5 and err_ours < 0.01, (err_ours, err_bnb)
    # code that reads bitsandbytes' Int8Params attributes: layer.weight.CB / .SCB, also after .to()
    for layer in (ours, ours.to("cpu", torch.float64).float()):
        assert torch.equal(layer.weight.CB, sd["weight"]) and torch.equal(layer.weight.SCB, sd["SCB"].float())
        assert layer.weight.CB is layer.weight_int8 and layer.weight.SCB is layer.weight_absmax


def test_linear8bitlt_has_fp16_weights_trains_the_float_weight():
    torch.manual_seed(2)
    layer = enn.Linear8bitLt(32, 16, has_fp16_weights=True, threshold=6.0)
    assert not layer.is_quantized and isinstance(layer.weight, nn.Parameter)
    before = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, y = torch.randn(64, 32), torch.randn(64, 16)
    for _ in range(5):
        opt.zero_grad()
        (layer(x) - y).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(layer.weight.detach(), before)
    # the forward is the int8 product of the current weight
    wq, wa = F.quantize_vectorwise(layer.weight.detach())
    torch.testing.assert_close(layer(x), F.int8_linear(x, wq, wa, layer.bias, threshold=6.0))


def test_linear8bitlt_rejects_bad_bitsandbytes_entries():
    layer = enn.Linear8bitLt(8, 4)
    with pytest.raises(ValueError, match="SCB"):
        layer.load_state_dict({"weight": torch.zeros(4, 8, dtype=torch.int8), "bias": torch.zeros(4)})
    with pytest.raises(ValueError, match="weight_format"):
        layer.load_state_dict({"weight": torch.zeros(4, 8, dtype=torch.int8), "SCB": torch.ones(4),
                               "weight_format": torch.tensor(2, dtype=torch.uint8), "bias": torch.zeros(4)})
    with pytest.raises(ValueError, match="index"):
        enn.Linear8bitLt(8, 4, index=torch.arange(8))


# ---------------------------------------------------------------- optimizers
def _train_state(cls, n=5000, steps=3, **kw):
    g = torch.Generator().manual_seed(3)
    p = nn.Parameter(torch.randn(n, generator=g))
    opt = cls([p], **kw)
    for _ in range(steps):
        p.grad = torch.randn(n, generator=g)
        opt.step()
    return p, opt


def _next_step_difference(p, ours, p_ref, ref) -> float:
    """One more step of both optimizers on the same gradient: ||step_ours - step_ref|| / ||step_ref||."""
    grad = torch.randn_like(p)
    p.grad, p_ref.grad = grad.clone(), grad.clone()
    before = p.detach().clone()
    ours.step()
    ref.step()
    step_ours, step_ref = p.detach() - before, p_ref.detach() - before
    return float((step_ours - step_ref).norm() / step_ref.norm())


@pytest.mark.parametrize("name, kw", [("Adam8bit", {}), ("AdamW8bit", {}), ("Lion8bit", {}),
                                      ("SGD8bit", {"momentum": 0.9}), ("RMSprop8bit", {})])
def test_optimizer_loads_bitsandbytes_state_dict(name, kw):
    """A bitsandbytes 8-bit optimizer checkpoint (nested quant state, block size 256) continues in eightbit; the
    next step equals bitsandbytes' own next step to the stated tolerance."""
    p_ref, ref = _train_state(getattr(bnb.optim, name), lr=1e-3, **kw)
    sd = ref.state_dict()
    p = nn.Parameter(p_ref.detach().clone())
    ours = getattr(O, name)([p], lr=1e-3, **kw)
    ours.load_state_dict(sd)
    st = ours.state[p]
    assert int(st["blocksize"]) == 256 and st["state1"].dtype == torch.uint8
    nested = sd["state"][0]["__bnb_optimizer_quant_state__"]
    assert torch.equal(st["state1"], nested["state1"]) and torch.equal(st["qmap1"], nested["qmap1"])
    rel = _next_step_difference(p, ours, p_ref, ref)
    # bitsandbytes rounds v stochastically? no: eightbit does (its default); and their requantization scales by a
    # reciprocal: the steps agree to a few percent, a wrong layout would be off by ~100 %
    assert rel < 0.05, rel


@pytest.mark.parametrize("name", ["AdEMAMix8bit", "AdEMAMix32bit"])
def test_ademamix_loads_bitsandbytes_stacked_state(name):
    """bitsandbytes' AdEMAMix stacks m1 and m2 in state1 [2, *shape] (and absmax1 [2, blocks]): eightbit splits
    them into its three states, and the next step follows bitsandbytes' (a wrong split would swap the fast and
    slow EMAs: a step off by ~100 %)."""
    if name == "AdEMAMix32bit":  # bitsandbytes 0.50's 32-bit AdEMAMix fails on CPU: build its layout by hand
        p_ref, ref = _train_state(O.AdEMAMix32bit, lr=1e-3)
        st = ref.state_dict()["state"][0]
        sd = ref.state_dict()
        sd["state"][0] = {"step": st["step"], "state1": torch.stack([st["exp_avg"], st["exp_avg_slow"]]),
                          "state2": st["exp_avg_sq"]}
        p = nn.Parameter(p_ref.detach().clone())
        ours = O.AdEMAMix32bit([p], lr=1e-3)
        ours.load_state_dict(sd)
        for k in ("exp_avg", "exp_avg_slow", "exp_avg_sq"):
            assert torch.equal(ours.state[p][k], st[k]), k
        return
    p_ref, ref = _train_state(bnb.optim.AdEMAMix8bit, lr=1e-3)
    sd = ref.state_dict()
    p = nn.Parameter(p_ref.detach().clone())
    ours = O.AdEMAMix8bit([p], lr=1e-3)
    ours.load_state_dict(sd)
    st, theirs = ours.state[p], ref.state[p_ref]
    assert int(st["blocksize"]) == 256
    assert torch.equal(st["state1"], theirs["state1"][0]) and torch.equal(st["state2"], theirs["state1"][1])
    assert torch.equal(st["state3"], theirs["state2"]) and torch.equal(st["absmax3"], theirs["absmax2"])
    assert torch.equal(st["qmap2"], theirs["qmap1"]) and torch.equal(st["qmap3"], theirs["qmap2"])
    assert _next_step_difference(p, ours, p_ref, ref) < 0.05


def test_torch_refuses_eightbit_8bit_state_loudly():
    """uint8 codes can no longer be read as torch's float moments: torch's AdamW fails on its first step."""
    p, opt = _train_state(O.AdamW8bit, lr=1e-3)
    q = nn.Parameter(p.detach().clone())
    t = torch.optim.AdamW([q], lr=1e-3)
    t.load_state_dict(opt.state_dict())
    q.grad = torch.randn_like(q)
    with pytest.raises(KeyError):
        t.step()


def test_eightbit_state_from_earlier_versions_loads():
    """eightbit 0.1's names (exp_avg uint8 + exp_avg_absmax) are translated."""
    p, opt = _train_state(O.AdamW8bit, lr=1e-3)
    sd = opt.state_dict()
    st = sd["state"][0]
    old = {"step": st["step"], "skipped_steps": st["skipped_steps"], "exp_avg": st["state1"],
           "exp_avg_absmax": st["absmax1"], "exp_avg_sq": st["state2"], "exp_avg_sq_absmax": st["absmax2"]}
    sd["state"][0] = old
    q = nn.Parameter(p.detach().clone())
    o2 = O.AdamW8bit([q], lr=1e-3)
    o2.load_state_dict(sd)
    assert torch.equal(o2.state[q]["state1"], st["state1"]) and int(o2.state[q]["blocksize"]) == 2048


def test_positional_arguments_bind_as_torch_and_bitsandbytes():
    p = [nn.Parameter(torch.randn(10))]
    assert O.Adam8bit(p, 1e-3, (0.8, 0.9), 1e-6, 0.1).defaults["betas"] == (0.8, 0.9)
    assert O.SGD8bit(p, 0.1, 0.9).defaults["momentum"] == 0.9
    r = O.RMSprop8bit(p, 0.1, 0.95, 1e-5)
    assert r.defaults["alpha"] == 0.95 and r.defaults["eps"] == 1e-5
    a = O.Adagrad8bit(p, 0.1, 0.01, 0.001)
    assert a.defaults["lr_decay"] == 0.01 and a.defaults["weight_decay"] == 0.001
    lamb = O.LAMB8bit(p, 1e-3)
    assert lamb.defaults["eps"] == 1e-8 and lamb.defaults["max_unorm"] == 1.0  # bitsandbytes' defaults
    assert O.Lion8bit(p, 1e-4, (0.95, 0.98), 0.1).defaults["weight_decay"] == 0.1


def test_lamb_bias_correction_and_adam_w_mode():
    results = {}
    for bc in (True, False):
        for mode in (True, False):
            p, _ = _train_state(O.LAMB32bit, lr=1e-2, bias_correction=bc, adam_w_mode=mode, weight_decay=0.1)
            results[bc, mode] = p.detach()
    assert len({tuple(v[:5].tolist()) for v in results.values()}) == 4  # every switch changes the result


@pytest.mark.parametrize("name", ["PagedAdamW8bit", "PagedAdam8bit", "PagedLion8bit", "PagedAdamW32bit",
                                  "PagedAdam32bit", "PagedLion32bit", "PagedAdEMAMix8bit"])
def test_paged_optimizers_equal_plain_ones_on_cpu(name):
    plain = getattr(O, name.removeprefix("Paged"))
    p1, _ = _train_state(getattr(O, name), lr=1e-3)
    p2, _ = _train_state(plain, lr=1e-3)
    assert getattr(O, name).is_paged and torch.equal(p1, p2)


def _ademamix_float64(p, grads, lr, betas, alpha, eps, wd, t_alpha=None, t_beta3=None):
    """AdEMAMix (Pagliardini et al.) in float64, written from the paper's update and its schedulers."""
    import math

    b1, b2, b3_final = betas
    alpha_final = alpha
    m1 = torch.zeros_like(p)
    m2 = torch.zeros_like(p)
    nu = torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        alpha = min(t * alpha_final / t_alpha, alpha_final) if t_alpha else alpha_final
        b3 = b3_final
        if t_beta3:
            s_ = t / t_beta3
            b3 = min(math.exp(math.log(b1) * math.log(b3_final) / ((1 - s_) * math.log(b3_final) + s_ * math.log(b1))),
                     b3_final)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3 * m2 + (1 - b3) * g
        nu = b2 * nu + (1 - b2) * g * g
        p = p * (1 - lr * wd) - lr * (m1 / (1 - b1**t) + alpha * m2) / ((nu / (1 - b2**t)).sqrt() + eps)
    return p


@pytest.mark.parametrize("schedule", [(None, None), (10, 20)])
def test_ademamix32bit_matches_the_paper_update(schedule):
    g = torch.Generator().manual_seed(4)
    p = nn.Parameter(torch.randn(3000, generator=g))
    grads = [torch.randn(3000, generator=g) for _ in range(30)]
    opt = O.AdEMAMix32bit([p], 1e-3, (0.9, 0.999, 0.9999), 5.0, *schedule, weight_decay=0.01)
    want = _ademamix_float64(p.detach().double(), [x.double() for x in grads], 1e-3, (0.9, 0.999, 0.9999), 5.0,
                             1e-8, 0.01, *schedule)
    for x in grads:
        p.grad = x.clone()
        opt.step()
    torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_ademamix8bit_follows_32bit():
    p8, _ = _train_state(O.AdEMAMix8bit, n=8192, steps=20, lr=1e-3)
    p32, _ = _train_state(O.AdEMAMix32bit, n=8192, steps=20, lr=1e-3)
    start, _ = _train_state(O.AdEMAMix32bit, n=8192, steps=0, lr=1e-3)
    rel = float(((p8 - p32).norm() / (p32 - start).norm()))
    assert rel < 0.1, rel


# ---------------------------------------------------------------- embeddings
def test_embedding8bit_loading_flow_and_memory():
    torch.manual_seed(5)
    fp = nn.Embedding(128, 64)
    e8 = enn.Embedding8bit(128, 64)
    e8.load_state_dict(fp.state_dict())
    e8 = e8.to("cpu")
    ids = torch.randint(0, 128, (3, 9))
    ref = bnb.nn.Embedding8bit(128, 64)
    ref.load_state_dict(fp.state_dict())
    ref = ref.to("cpu")
    out = e8(ids)
    assert out.shape == (3, 9, 64) and out.dtype == torch.float32
    err = float((out - fp(ids)).norm() / fp(ids).norm())
    err_bnb = float((ref(ids).float() - fp(ids)).norm() / fp(ids).norm())
    assert err < 0.01 and err <= err_bnb * 1.05 + 1e-6
    assert sum(t.numel() * t.element_size() for t in e8.buffers()) < 0.3 * fp.weight.numel() * 4
    assert set(e8.state_dict()) == {"weight_int8", "weight_absmax"}


def test_embedding_keeps_32bit_optimizer_state():
    emb = enn.Embedding(5000, 8)
    opt = O.Adam8bit(emb.parameters(), lr=1e-3)
    emb(torch.arange(10)).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["exp_avg"].dtype == torch.float32


# ---------------------------------------------------------------- functional
def test_functional_int8_names_equal_bitsandbytes():
    A = torch.randn(7, 64)
    A[2, 5], A[4, 9] = 10.0, -8.0
    for threshold in (0.0, 6.0):
        got, want = F.int8_vectorwise_quant(A, threshold), bnb.functional.int8_vectorwise_quant(A.clone(), threshold)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert (got[2] is None) == (want[2] is None) and (got[2] is None or torch.equal(got[2], want[2]))
    a = torch.randint(-127, 128, (2, 3, 64), dtype=torch.int8)
    b = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    acc = F.int8_linear_matmul(a, b)  # batched input
    assert torch.equal(acc, bnb.functional.int8_linear_matmul(a, b))
    rs, cs, bias = torch.rand(6), torch.rand(16), torch.rand(16)
    got = F.int8_mm_dequant(acc.view(6, 16), rs, cs, bias=bias)
    want = bnb.functional.int8_mm_dequant(acc.view(6, 16), rs, cs, bias=bias)
    assert got.dtype == want.dtype == torch.float16
    # bitsandbytes multiplies by 6.200124e-05 for 1/127**2 (2e-5 relative off); eightbit divides exactly
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=1e-3)
    q_row, q_col, r, c, cols = F.int8_double_quant(A, threshold=6.0)
    assert torch.equal(q_row, F.int8_vectorwise_quant(A, 6.0)[0]) and c.shape == (64,) and cols.tolist() == [5, 9]
    torch.testing.assert_close(F.int8_vectorwise_dequant(q_row, r), A.masked_fill(A.abs() >= 6, 0).masked_fill(
        torch.zeros(64, dtype=torch.bool).index_fill(0, cols, True), 0), atol=float(r.max()) / 254 + 1e-6, rtol=0)


@pytest.mark.parametrize("args", [(True, 5, 2, 8), (True, 4, 3, 8), (False, 5, 3, 8), (True, 2, 1, 4)])
def test_create_fp8_map_equals_bitsandbytes(args):
    assert torch.equal(F.create_fp8_map(*args), bnb.functional.create_fp8_map(*args).float())


@pytest.mark.parametrize("args", [(True, 8, True), (False, 8, True), (True, 8, False), (True, 4, True), (False, 3, True)])
def test_create_linear_map_fewer_bits(args):
    assert torch.equal(F.create_linear_map(*args), bnb.functional.create_linear_map(*args).sort().values)


def test_blockwise_names_arguments_and_quant_state():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5000, generator=g)
    q, st = F.quantize_blockwise(x, None, None, None, 256)  # bitsandbytes' positional order
    qb, sb = bnb.functional.quantize_blockwise(x, blocksize=256)
    assert torch.equal(st.absmax, sb.absmax) and torch.equal(st.code, sb.code)
    # bitsandbytes scales by the reciprocal of the absmax, eightbit divides: a few codes one step apart
    assert (q.int() - qb.int()).abs().max() <= 1 and (q != qb).float().mean() < 0.01
    y = F.dequantize_blockwise(qb, absmax=sb.absmax, code=sb.code, blocksize=256)
    assert torch.equal(y, bnb.functional.dequantize_blockwise(qb, absmax=sb.absmax, code=sb.code, blocksize=256))
    back = F.QuantState.from_dict(sb.as_dict() | {"shape": (5000,)})
    assert torch.equal(F.dequantize_blockwise(qb, back), y)
    assert F.QuantState.from_dict(st.as_dict()).blocksize == 256
    big, stb = F.quantize_blockwise(torch.randn(40000, generator=g), blocksize=16384)  # up to 16384
    assert stb.absmax.shape == (3,) and F.dequantize_blockwise(big, stb).shape == (40000,)
    with pytest.raises(ValueError, match="nested"):
        F.quantize_blockwise(x, nested=True)


def test_every_optimizer_takes_bitsandbytes_keywords():
    """Each optimizer class that bitsandbytes also has accepts every keyword of bitsandbytes' constructor, with
    bitsandbytes' default values (read from its signature, so a keyword it adds later is caught): the 6 to 8
    positional torch arguments bind the same, and ``optim_bits``, ``args=None``, ``min_8bit_size``, ``is_paged``,
    ``max_unorm`` by keyword. ``is_paged=True`` gives the paged optimizer; ``args`` other than None is refused."""
    import inspect

    names = sorted(n for n in dir(bnb.optim) if isinstance(getattr(bnb.optim, n), type) and hasattr(O, n)
                   and issubclass(getattr(O, n), torch.optim.Optimizer))
    assert len(names) >= 30, names
    for name in names:
        sig = inspect.signature(getattr(bnb.optim, name).__init__)
        kw = {k: p.default for k, p in sig.parameters.items()
              if k not in ("self", "params") and p.default is not inspect.Parameter.empty}
        kw.setdefault("lr", 1e-3)
        if "LARS" in name:  # bitsandbytes refuses its own default momentum=0 for LARS as well
            kw["momentum"] = 0.9
        p = torch.nn.Parameter(torch.randn(5000))
        opt = getattr(O, name)([p], **kw)
        assert opt.is_paged == (kw.get("is_paged", False) or name.startswith("Paged")), name
        if "is_paged" in sig.parameters:
            assert getattr(O, name)([p], **{**kw, "is_paged": True}).is_paged, name
        with pytest.raises(ValueError, match="args"):
            getattr(O, name)([p], **{**kw, "args": object()})
