"""Long runs: no drift of 8-bit vs 32-bit over 2,000 LM steps, and 10,000 AdamW8bit steps with bounded
state quantization error (measured against exact fp32 moments fed the same gradients)."""
import pytest
import torch
from torch import nn

import eightbit.optim as O
from eightbit.models.parity import tail_mean, train_lm


@pytest.mark.slow
def test_lm_2000_steps_no_drift():
    l8 = train_lm(lambda p: O.Adam8bit(p, lr=2e-3), steps=2000, seed=1)
    l32 = train_lm(lambda p: torch.optim.Adam(p, lr=2e-3), steps=2000, seed=1)
    print(f"2000 steps: Adam8bit {tail_mean(l8, 50):.4f}  torch Adam {tail_mean(l32, 50):.4f}")
    assert abs(tail_mean(l8, 50) - tail_mean(l32, 50)) <= 0.02 * tail_mean(l32, 50)
    # no drift: the gap at the end is not larger than mid-run (plus noise)
    mid8, mid32 = sum(l8[950:1050]) / 100, sum(l32[950:1050]) / 100
    assert abs(tail_mean(l8, 100) - tail_mean(l32, 100)) <= abs(mid8 - mid32) + 0.01 * tail_mean(l32, 100)


@pytest.mark.slow
def test_adamw8bit_10k_steps_bounded_quantization_error():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(2048, 32, generator=g)
    y = torch.sin(X @ torch.randn(32, 8, generator=g))

    def run(make_opt, track=False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 128), nn.Tanh(), nn.Linear(128, 8))
        opt = make_opt(model.parameters())
        w = model[0].weight
        m = torch.zeros_like(w, dtype=torch.float64)
        v = torch.zeros_like(w, dtype=torch.float64)
        errors, losses = [], []
        for i in range(10_000):
            idx = torch.arange(i * 64, (i + 1) * 64) % 2048
            loss = (model(X[idx]) - y[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if track:
                m.mul_(0.9).add_(w.grad.double(), alpha=0.1)
                v.mul_(0.999).addcmul_(w.grad.double(), w.grad.double(), value=0.001)
                if (i + 1) % 1000 == 0:
                    st = opt.state[w]
                    em = _dequant(st["state1"], st["absmax1"], st["qmap1"])
                    ev = _dequant(st["state2"], st["absmax2"], st["qmap2"])
                    errors.append((((em - m).norm() / m.norm()).item(), ((ev - v).norm() / v.norm()).item()))
        return losses, errors

    l8, errors = run(lambda p: O.AdamW8bit(p, lr=1e-3), track=True)
    l32, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-3))
    print(f"10k steps: AdamW8bit {tail_mean(l8, 200):.5f} torch AdamW {tail_mean(l32, 200):.5f}")
    print("relative state error (m, v) every 1000 steps:", [(round(a, 4), round(b, 4)) for a, b in errors])
    assert abs(tail_mean(l8, 200) - tail_mean(l32, 200)) <= 0.02 * tail_mean(l32, 200)
    # first moment: error small and flat over 10k steps
    assert all(e[0] < 0.1 for e in errors) and errors[-1][0] <= 1.5 * errors[1][0] + 0.01
    # second moment: stochastic rounding (the default) lets the 8-bit v follow its 0.1 %/step decay; with
    # round-to-nearest it froze and its error grew from ~0.18 to ~0.40 over 10k steps (2.2x). Now (binary dynamic
    # map): 0.056-0.109, the last three checkpoints 1.3x the first three (decimal map: 0.08-0.115, 1.21-1.26x;
    # two runs whose parameters differ by ulps: the
    # training trajectory, hence any single checkpoint, depends on them). Compared as means of three so that one
    # checkpoint's noise does not decide; RTN's 2.2x growth is far outside 1.5x.
    assert all(e[1] < 0.15 for e in errors)
    first, last = sum(e[1] for e in errors[:3]) / 3, sum(e[1] for e in errors[-3:]) / 3
    assert last <= 1.5 * first, f"second-moment quantization error grows over time: {first:.4f} -> {last:.4f}"


def _dequant(q, absmax, qmap):
    code = qmap.double()
    bs = 2048
    vals = code[q.reshape(-1).long()]
    return (vals * absmax.double().repeat_interleave(bs)[: vals.numel()]).view(q.shape)
