"""Paged optimizers (optim/paging.py): state kept on the host, copied to the parameter's device for its update and
back. On this CPU-only CI the paging path is forced for CPU parameters (``_pages`` patched), which runs exactly the
code a CUDA parameter runs, copies included; the CUDA test runs where a GPU is (benchmarks/gpu_run.sh)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import eightbit.optim as O
from eightbit.optim import paging
from eightbit.optim.base import Optimizer8bit

CASES = [("PagedAdamW8bit", {}), ("PagedAdamW32bit", {}), ("PagedLion8bit", {}),
         ("PagedAdam8bit", {"percentile_clipping": 90, "max_unorm": 0.5}), ("PagedAdEMAMix8bit", {})]


@pytest.fixture
def forced(monkeypatch):
    """Page every parameter of a paged optimizer (CPU ones included); records each fetch's (host, device) tensors in
    ``.fetches`` and each state tensor placed on the host by ``load_state_dict`` in ``.placed``."""
    record = SimpleNamespace(fetches=[], placed=[])
    monkeypatch.setattr(Optimizer8bit, "_pages", lambda self, p: self.is_paged)
    real_fetch, real_host = paging.fetch, paging.host_tensor

    def fetch(tensors, device):
        out = real_fetch(tensors, device)
        record.fetches.append((list(tensors), out))
        return out

    def host_tensor(t, for_device):
        record.placed.append(t)
        return real_host(t, for_device)

    monkeypatch.setattr(paging, "fetch", fetch)
    monkeypatch.setattr(paging, "host_tensor", host_tensor)
    return record


def _run(cls, kw, seed, steps=4, opt=None, p=None):
    g = torch.Generator().manual_seed(seed)
    if p is None:
        p = nn.Parameter(torch.randn(3 * 2048 + 77, generator=g))  # full blocks and a partial one
    opt = opt or cls([p], lr=1e-2, **kw)
    for _ in range(steps):
        p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return p, opt


@pytest.mark.parametrize("name,kw", CASES)
def test_forced_paging_equals_plain_and_copies(forced, seed, name, kw):
    paged_cls, plain_cls = getattr(O, name), getattr(O, name.removeprefix("Paged"))
    p1, o1 = _run(paged_cls, kw, seed)
    p2, o2 = _run(plain_cls, kw, seed)
    assert torch.equal(p1, p2)
    for k, v in o2.state[p2].items():
        assert torch.equal(o1.state[p1][k], v), k
    assert len(forced.fetches) == 4  # one fetch per step, of the state tensors, as copies (never the host tensors)
    for host, dev in forced.fetches:
        assert host and len(host) == len(dev)
        assert all(h.data_ptr() != d.data_ptr() for h, d in zip(host, dev))
    held = {t.data_ptr() for t in o1.state[p1].values() if isinstance(t, torch.Tensor)}
    assert all(h.data_ptr() in held for host, _ in forced.fetches for h in host)  # fetched from the optimizer's state


def test_forced_paging_state_dict_round_trip(forced, seed):
    p1, o1 = _run(O.PagedAdamW8bit, {}, seed)
    p2 = nn.Parameter(p1.detach().clone())
    o2 = O.PagedAdamW8bit([p2], lr=1e-2)
    o2.load_state_dict(o1.state_dict())
    assert len(forced.placed) == 4  # state1, state2, absmax1, absmax2 went through the host placement
    for k, v in o1.state[p1].items():
        assert torch.equal(o2.state[p2][k], v)
        if k.startswith("qmap"):  # the one shared code map per kind (read only), in both optimizers
            assert o2.state[p2][k] is v
        elif isinstance(v, torch.Tensor):  # the states themselves are copies
            assert v.data_ptr() != o2.state[p2][k].data_ptr(), k
    forced.fetches.clear()
    _run(None, {}, seed + 1, steps=2, opt=o1, p=p1)
    _run(None, {}, seed + 1, steps=2, opt=o2, p=p2)
    assert torch.equal(p1, p2)
    assert len(forced.fetches) == 4  # two steps each: the loaded optimizer pages its steps too


def test_cpu_parameters_are_not_paged():
    p = nn.Parameter(torch.randn(4096))
    opt = O.PagedAdamW8bit([p], lr=1e-3)
    assert opt.is_paged and not opt._pages(p.detach())
    p.grad = torch.randn(4096)
    opt.step()
    assert opt.state[p]["state1"].device == p.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by benchmarks/gpu_run.sh)")
@pytest.mark.parametrize("name", ["PagedAdamW8bit", "PagedAdamW32bit"])
def test_cuda_state_lives_on_pinned_host_and_matches_plain(seed, name):
    paged_cls, plain_cls = getattr(O, name), getattr(O, name.removeprefix("Paged"))
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(1 << 20, generator=g)
    grads = [torch.randn(1 << 20, generator=g).cuda() for _ in range(3)]
    p1, p2 = nn.Parameter(init.cuda()), nn.Parameter(init.cuda())
    o1, o2 = paged_cls([p1], lr=1e-3), plain_cls([p2], lr=1e-3)
    for gr in grads:
        p1.grad, p2.grad = gr.clone(), gr.clone()
        o1.step()
        o2.step()
    big = [k for k in o1.state[p1] if k.startswith(("state", "absmax", "exp_avg"))]
    assert big and all(o1.state[p1][k].device.type == "cpu" and o1.state[p1][k].is_pinned() for k in big)
    assert torch.equal(p1, p2)
    for k in big:
        assert torch.equal(o1.state[p1][k], o2.state[p2][k].cpu()), k
    p3 = nn.Parameter(p1.detach().clone())
    o3 = paged_cls([p3], lr=1e-3)
    o3.load_state_dict(o1.state_dict())  # a loaded state is paged too
    assert all(o3.state[p3][k].device.type == "cpu" and o3.state[p3][k].is_pinned() for k in big)
    assert all(torch.equal(o3.state[p3][k], o1.state[p1][k]) for k in big)
