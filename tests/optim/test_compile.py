"""Optimizers under ``torch.compile``: the step runs eagerly inside a compiled function (a graph break), with the
eager result, whether ``step`` itself is compiled or a whole training step that calls it."""
import pytest
import torch

import eightbit.optim as O


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 8))


@pytest.mark.parametrize("cls", [O.AdamW8bit, O.Lion8bit, O.SGD8bit])
def test_compiled_step_equals_eager(cls, gen):
    """``torch.compile(opt.step)`` (torch's compiled-optimizer recipe) steps exactly as ``opt.step``; 8-bit and
    32-bit states (min_8bit_size splits the model's tensors between them)."""
    kw = {"momentum": 0.9} if cls is O.SGD8bit else {}
    a, b = _model(0), _model(0)
    opt_a = cls(a.parameters(), lr=1e-3, min_8bit_size=4096, **kw)
    opt_b = cls(b.parameters(), lr=1e-3, min_8bit_size=4096, **kw)
    compiled = torch.compile(opt_b.step)
    for step in range(3):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn(pa.shape, generator=gen)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        compiled()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb), step
    assert opt_b.state[b[0].weight]["state1"].dtype == torch.uint8  # the 8-bit path ran
    assert opt_b.state[b[0].bias]["exp_avg" if cls is not O.SGD8bit else "momentum_buffer"].dtype == torch.float32


def test_compiled_training_step_equals_eager(gen):
    """A compiled training step (forward, backward, ``opt.step()``, ``zero_grad``) gives the eager losses and
    parameters: the optimizer step breaks the graph and runs eagerly."""
    x, y = torch.randn(32, 64, generator=gen), torch.randn(32, 8, generator=gen)

    def make():
        model = _model(1)
        return model, O.AdamW8bit(model.parameters(), lr=1e-2, min_8bit_size=4096)

    def train_step(model, opt):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    (ma, oa), (mb, ob) = make(), make()
    compiled = torch.compile(train_step, backend="eager")
    for step in range(4):
        la, lb = train_step(ma, oa), compiled(mb, ob)
        assert torch.equal(la, lb), step
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    assert int(ob.state[mb[0].weight]["step"]) == 4
