"""The Triton optimizer kernel (interpreted, CPU tensors) inside the real optimizers, against the reference:
after every step the 8-bit states (codes and absmax) are bit-identical, stochastic rounding included, for every
rule, 8-bit and 32-bit states, float32 and bfloat16 parameters; parameters within a bound derived in ulps; a
NaN gradient block stays in its block.

The kernel reaches the optimizers by replacing the op (``ops.optimizer_update``/``_norm``) for the test: on a
CPU machine the op's CUDA registration cannot serve CPU tensors. L2 weight decay is a fused multiply-add on the
GPU; the interpreter evaluates ``tl.fma`` as a product and a sum (two roundings), so the L2 cases use a power of
two as weight decay, where the product is exact and both agree with the reference's single rounding."""
import pytest
import torch

import eightbit.optim as O
from eightbit.functional import ops
from eightbit.functional.optimizer import (OptimHyper, WD_DECOUPLED, optimizer_update_many_reference,
                                           optimizer_update_norm_reference, optimizer_update_reference)
from eightbit.kernels import forced_reference, reference_only
from eightbit.kernels.cuda import optimizer as K
from tests.kernels.test_native_cpu import _ulp

from .device import back, on

WD = 2.0**-7  # exact products p * WD: see the module docstring

OPTIMIZERS = {
    "AdamW8bit": lambda p, **kw: O.AdamW8bit([p], 1e-3, weight_decay=0.01, **kw),
    "Adam8bit-L2": lambda p, **kw: O.Adam8bit([p], 1e-3, weight_decay=WD, **kw),
    "SGD8bit-nesterov-L2": lambda p, **kw: O.SGD8bit([p], 1e-2, momentum=0.9, nesterov=True, weight_decay=WD),
    "SGD8bit-no-momentum": lambda p, **kw: O.SGD8bit([p], 1e-2),
    "RMSprop8bit": lambda p, **kw: O.RMSprop8bit([p], 1e-3, **kw),
    "Adagrad8bit": lambda p, **kw: O.Adagrad8bit([p], 1e-2, lr_decay=0.01, **kw),
    "Lion8bit": lambda p, **kw: O.Lion8bit([p], 1e-4, weight_decay=0.1),
    "LAMB8bit": lambda p, **kw: O.LAMB8bit([p], 1e-3, weight_decay=0.01, **kw),
    "LARS8bit": lambda p, **kw: O.LARS8bit([p], 1e-2),
    "AdEMAMix8bit": lambda p, **kw: O.AdEMAMix8bit([p], 1e-3, **kw),
    "AdamW32bit": lambda p, **kw: O.AdamW32bit([p], 1e-3, weight_decay=0.01),
    "Lion32bit": lambda p, **kw: O.Lion32bit([p], 1e-4),
    "AdEMAMix32bit": lambda p, **kw: O.AdEMAMix32bit([p], 1e-3),
}
NORM_OPTIMIZERS = {"LAMB8bit", "LARS8bit"}  # the step is scaled by a norm the kernel sums in another order


@pytest.fixture
def triton_ops(monkeypatch):
    """ops.optimizer_update(_norm) served by the Triton kernel, except inside reference_only()."""
    def update(*args):
        if forced_reference() or K.optimizer_update(*args) is NotImplemented:
            optimizer_update_reference(*args)

    def norm(*args):
        out = NotImplemented if forced_reference() else K.optimizer_update_norm(*args)
        return optimizer_update_norm_reference(*args) if out is NotImplemented else out

    def many(*args):
        if forced_reference():
            optimizer_update_many_reference(*args)
        else:
            K.optimizer_update_many(*args)

    monkeypatch.setattr(ops, "optimizer_update", update)
    monkeypatch.setattr(ops, "optimizer_update_many", many)
    monkeypatch.setattr(ops, "optimizer_update_norm", norm)


def _run(name, kw, gen, dtype=torch.float32, steps=5, bad=False):
    n = 2048 * 3 + 77  # full blocks and the partial last block
    p2 = torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype))  # the reference's, on the CPU
    p1 = torch.nn.Parameter(on(p2.detach().clone()))
    o1, o2 = OPTIMIZERS[name](p1, **kw), OPTIMIZERS[name](p2, **kw)
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)  # worst-case relative error of a float32 sum of n terms
    bound = torch.zeros(n)
    for step in range(steps):
        g = torch.randn(n, generator=gen)
        g[100:300] *= 1e4  # outliers in one block
        if bad and step:  # nonfinite="skip_block" (the default): these blocks must not move
            g[2048 + 5], g[n - 1] = float("nan"), -float("inf")
            g[4096 + 7] = 3e38  # finite, but its square overflows: an 8-bit second moment's block is skipped too
        p1.grad, p2.grad = on(g.clone().to(dtype)), g.clone().to(dtype)
        before = p2.detach().float().clone()
        before1 = back(p1.detach()).clone()
        o1.step()
        if bad and step:
            kept = torch.zeros(n, dtype=torch.bool)
            kept[2048:4096] = kept[3 * 2048:] = True
            kept[4096 : 3 * 2048] = name in ("AdamW8bit", "RMSprop8bit")
            assert torch.equal(back(p1.detach())[kept], before1[kept]), step
        with reference_only():
            o2.step()
        moved = p2.detach().float() - before
        bound += 4 * _ulp(moved) + _ulp(p2.detach().float())
        if name in NORM_OPTIMIZERS:  # both norms within gamma of the exact one: the scale within ~gamma
            bound += 2 * gamma * moved.abs()
        if dtype != torch.float32:  # the parameter's own rounding may then go either way
            bound += p2.detach().float().abs() * 2.0**-8  # one bfloat16 ulp (relative 2^-8 at most)
        for key, v in o1.state[p1].items():
            assert torch.equal(back(v).nan_to_num(), o2.state[p2][key].nan_to_num()), (key, step)
    diff = (back(p1.detach()).float() - p2.detach().float()).abs()
    worst = int((diff - bound).argmax())
    assert (diff <= bound).all(), f"element {worst}: |diff| {float(diff[worst]):.3g} > bound {float(bound[worst]):.3g}"


def _cases():
    """Every optimizer with its defaults; those with an unsigned 8-bit state also rounding to nearest."""
    for name in OPTIMIZERS:
        yield name, {}
        if "8bit" in name and not any(s in name for s in ("SGD", "Lion", "LARS")):
            yield name, {"stochastic_rounding": False}
        if name in ("AdamW8bit", "RMSprop8bit"):  # bitsandbytes' decimal dynamic map (default: binary)
            yield name, {"state_code": "dynamic"}


@pytest.mark.parametrize("name,kw", list(_cases()))
def test_states_bit_identical_to_reference(triton_ops, gen, name, kw):
    _run(name, kw, gen)


@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit", "AdamW32bit"])
def test_bfloat16_parameters(triton_ops, gen, name):
    _run(name, {}, gen, dtype=torch.bfloat16, steps=3)


@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW32bit", "Lion8bit", "RMSprop8bit"])
def test_skip_block_equals_reference(triton_ops, gen, name):
    """nonfinite="skip_block": blocks whose gradient holds a NaN/Inf keep values and state, and so do the blocks
    of a finite gradient whose square overflows an 8-bit state; the states and the skipped-block count
    bit-identical to the reference's."""
    _run(name, {}, gen, steps=3, bad=True)


def test_many_parameters_in_one_call(triton_ops, gen):
    """optimizer_update_many on the Triton kernel (one launch per parameter): states bit-identical to the
    reference's for a group of 8-bit and 32-bit parameters, a NaN block skipped."""
    shapes = [2048 * 2 + 5, 3000, 100, 40]
    ps = [torch.nn.Parameter(on(torch.randn(n, generator=gen))) for n in shapes]
    refs = [torch.nn.Parameter(back(p.detach()).clone()) for p in ps]
    o1, o2 = O.AdamW8bit(ps, 1e-3, min_8bit_size=2048), O.AdamW8bit(refs, 1e-3, min_8bit_size=2048)
    for step in range(3):
        for p, r in zip(ps, refs):
            g = torch.randn(r.shape, generator=gen)
            if step == 1:
                g[3] = float("nan")
            p.grad, r.grad = on(g.clone()), g
        o1.step()
        with reference_only():
            o2.step()
        for p, r in zip(ps, refs):
            for key, v in o1.state[p].items():
                assert torch.equal(back(v), o2.state[r][key]), (key, step)
    assert all(int(o1.state[p]["skipped_blocks"]) == 1 for p in ps)


def test_nan_gradient_block_isolated(triton_ops, gen):
    """nonfinite='propagate': the block holding the NaN gets NaN absmax; every other block steps normally."""
    n = 2048 * 4
    p = torch.nn.Parameter(on(torch.randn(n, generator=gen)))
    opt = O.AdamW8bit([p], 1e-3, nonfinite="propagate")
    g = torch.randn(n, generator=gen)
    g[2048 + 300] = float("nan")
    p.grad = on(g)
    opt.step()
    absmax, pv = back(opt.state[p]["absmax1"]), back(p.detach())
    assert absmax[1].isnan() and not absmax[[0, 2, 3]].isnan().any()
    assert torch.isfinite(pv[:2048]).all() and torch.isfinite(pv[4096:]).all()


def test_norm_within_summation_bound(gen):
    """optimizer_update_norm: per-block partial sums, then torch's sum; both within gamma_n of the exact sum, for
    the direction's and the parameter's squared norms alike."""
    from eightbit.functional.codes import dynamic_codebook
    n = 2048 * 2 + 9
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    states = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen) for _ in range(2)]
    absmaxes = [torch.rand(3, generator=gen) for _ in range(2)]
    codes = [dynamic_codebook(True).values, dynamic_codebook(False).values]
    hyper = OptimHyper(lr=1e-3, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=0.001, eps=1e-8,
                       weight_decay=0.01).as_list()
    got = K.optimizer_update_norm("lamb", on(p), on(g), [on(s) for s in states], [on(a) for a in absmaxes],
                                  [on(c) for c in codes], hyper, WD_DECOUPLED, 2048)
    want = optimizer_update_norm_reference("lamb", p, g, states, absmaxes, codes, hyper, WD_DECOUPLED, 2048)
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    got = back(got)
    assert got.shape == want.shape == (2,)
    assert (got - want).abs().le(2 * gamma * want).all(), (got, want)
    assert abs(float(want[1]) - float(p.double().square().sum())) <= 2.0**-23 * float(want[1])


def test_float64_parameters_decline(gen):
    p = on(torch.randn(300, dtype=torch.float64))
    assert K.optimizer_update("adam", p, p.clone(), [torch.zeros_like(p)] * 2, [], [], OptimHyper().as_list(), 0,
                              256, [-1, -1]) is NotImplemented
