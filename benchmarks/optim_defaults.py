"""Measure the optimizer defaults against bitsandbytes' (docs/migrating_from_bitsandbytes.md): AdamW8bit with block
2048/256 and with/without stochastic rounding vs torch.optim.AdamW on the 10,000-step MLP of
tests/optim/test_long_runs.py; prints JSON (final-loss ratio, second-moment error every 1,000 steps).
Usage: python -m benchmarks.optim_defaults   (about 3 minutes, one thread)"""
import json
import time

import torch
from torch import nn
import eightbit.optim as O
torch.set_num_threads(1)
def _dequant(q, absmax, code, bs):
    return (code[q.long()].view(-1, bs) * absmax.view(-1, 1)).view(q.shape) if q.numel() % bs == 0 else None
g = torch.Generator().manual_seed(5)
X = torch.randn(2048, 32, generator=g); y = torch.sin(X @ torch.randn(32, 8, generator=g))
def run(make_opt, bs=None, steps=10000):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.Tanh(), nn.Linear(128, 8))
    opt = make_opt(model.parameters()); w = model[0].weight
    v = torch.zeros_like(w, dtype=torch.float64); losses=[]; verr=[]
    for i in range(steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % 2048
        loss = (model(X[idx]) - y[idx]).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step(); losses.append(float(loss.detach()))
        if bs:
            v.mul_(0.999).addcmul_(w.grad.double(), w.grad.double(), value=0.001)
            if (i+1) % 1000 == 0:
                st = opt.state[w]; ev = _dequant(st["state2"], st["absmax2"], st["qmap2"], bs)
                verr.append(round(float((ev - v).norm() / v.norm()), 4))
    return sum(losses[-200:]) / 200, verr
ref, _ = run(lambda p: torch.optim.AdamW(p, lr=1e-3))
out = {"torch_adamw_tail_loss": ref}
for name, kw, bs in [("eightbit default (binary map, 2048, SR)", {}, 2048),
                     ("decimal dynamic map (2048, SR)", {"state_code": "dynamic"}, 2048), ("blocksize 256, SR", {"blocksize": 256}, 256),
                     ("bitsandbytes-like (256, no SR)", {"blocksize": 256, "stochastic_rounding": False}, 256),
                     ("2048, no SR", {"stochastic_rounding": False}, 2048)]:
    t = time.time(); tail, verr = run(lambda p: O.AdamW8bit(p, lr=1e-3, **kw), bs)
    out[name] = {"tail_loss_vs_fp32": round(tail / ref - 1, 4), "v_error_every_1000": verr, "s": round(time.time() - t)}
print(json.dumps(out, indent=1))
