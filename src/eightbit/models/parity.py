"""Small deterministic training tasks to compare an 8-bit optimizer with its 32-bit reference: a tiny
transformer LM on a synthetic Markov grammar and an MLP classifier on teacher-labelled data. Every weight
matrix has >= 4096 elements so that 8-bit state is really used. Used by the test suite and by
examples/optimizer_parity.py; handy to check a custom optimizer configuration before a long run::

    from eightbit.models.parity import train_lm, tail_mean
    loss8 = tail_mean(train_lm(lambda p: eightbit.optim.AdamW8bit(p, lr=3e-3), steps=300))
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

import eightbit.optim as O

VOCAB, DIM, SEQ, BATCH = 64, 64, 32, 32


def grammar_batches(seed: int, steps: int) -> torch.Tensor:
    """(steps, BATCH, SEQ + 1) token ids from a fixed sparse Markov chain (3 successors per token)."""
    g = torch.Generator().manual_seed(1234)
    succ = torch.randint(0, VOCAB, (VOCAB, 3), generator=g)
    probs = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(steps, BATCH, SEQ + 1, dtype=torch.long)
    tok = torch.randint(0, VOCAB, (steps, BATCH), generator=g)
    out[..., 0] = tok
    for t in range(1, SEQ + 1):
        choice = torch.multinomial(probs, steps * BATCH, replacement=True, generator=g).view(steps, BATCH)
        tok = succ[tok, choice]
        out[..., t] = tok
    return out


class TinyLM(nn.Module):
    """One pre-LN transformer block (4 heads, causal), tied to nothing; ~50k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(SEQ, DIM) * 0.02)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(DIM), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
        self.head = nn.Linear(DIM, VOCAB)
        self.register_buffer("mask", torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, VOCAB)
        x = self.emb(ids) + self.pos[: ids.shape[1]]
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        x = x + self.ff(self.ln2(x))
        return self.head(self.lnf(x))


def train_lm(make_opt: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer], *, steps: int, seed: int = 0,
             data_seed: int = 0, on_step: Callable | None = None) -> list[float]:
    """Train a fresh TinyLM (init from ``seed``) with ``make_opt(params)``; returns the loss per step."""
    torch.manual_seed(seed)
    model = TinyLM()
    opt = make_opt(model.parameters())
    data = grammar_batches(data_seed, steps)
    losses = []
    for i in range(steps):
        ids = data[i]
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(i, model, opt)
    return losses


def train_mlp(make_opt: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer], *, steps: int,
              seed: int = 0) -> list[float]:
    """MLP 64-128-128-10 on labels from a random teacher network; full-batch-ish minibatches of 128."""
    g = torch.Generator().manual_seed(seed + 99)
    X = torch.randn(4096, 64, generator=g)
    teacher = torch.randn(64, 10, generator=g)
    y = (torch.tanh(X @ teacher) + 0.3 * torch.randn(4096, 10, generator=g)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = make_opt(model.parameters())
    losses = []
    for i in range(steps):
        idx = torch.arange(i * 128, (i + 1) * 128) % 4096
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def tail_mean(losses: list[float], n: int = 20) -> float:
    """Mean of the last ``n`` losses (a steadier 'final loss' than the last step)."""
    return sum(losses[-n:]) / len(losses[-n:])


# name -> (8-bit class, 32-bit reference factory, kwargs): the cases of the parity table in the README
PARITY_CASES = {
    "Adam": (O.Adam8bit, torch.optim.Adam, dict(lr=3e-3)),
    "AdamW": (O.AdamW8bit, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.05)),
    "SGD": (O.SGD8bit, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "RMSprop": (O.RMSprop8bit, torch.optim.RMSprop, dict(lr=1e-3)),
    "Adagrad": (O.Adagrad8bit, torch.optim.Adagrad, dict(lr=0.03)),
    "LAMB": (O.LAMB8bit, O.LAMB32bit, dict(lr=1e-2, weight_decay=0.01)),
    "LARS": (O.LARS8bit, O.LARS32bit, dict(lr=0.1, momentum=0.9)),
    "Lion": (O.Lion8bit, O.Lion32bit, dict(lr=1e-3, weight_decay=0.01)),
}
