"""Case "optim": one AdamW step over 50M fp32 parameters (12 tensors of 4096 x 1024) with fp32 gradients.

Every optimizer gets its own copy of the same parameters; the gradients are shared (no optimizer here
writes to them). Accuracy is measured apart, on a 1M-parameter tensor over 10 steps with fresh gradients:
relative error of the total update (p_final - p_0) against AdamW in float64, so 8-bit state error shows.
State memory counts every tensor in ``optimizer.state`` (inner tensors of tensor subclasses included).
Floor: bytes moved per step / measured bandwidth: 12 B/param (read p, g; write p) + 2 x state bytes/param
(fp32 state: 28 B/param; 8-bit state: ~16 B/param).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .common import Built, Context, Impl, Row, Unavailable, measure, rel_error

LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 1e-2
ACC_STEPS = 10


def shapes(quick: bool) -> list[tuple[int, int]]:
    """Parameter shapes: 50.3M elements (quick: 5.2M)."""
    return [(1024, 1024)] * 5 if quick else [(4096, 1024)] * 12


def _torch_fused(params):
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, fused=True)


def _torch_foreach(params):
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=True)


def _eightbit(params):
    from eightbit.optim import AdamW8bit

    return AdamW8bit(params, LR, betas=BETAS, eps=EPS, weight_decay=WD)


def _torchao(params):
    try:
        from torchao.optim import AdamW8bit
    except ImportError as e:
        raise Unavailable("torchao not installed") from e
    return AdamW8bit(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)


def _bitsandbytes(params):
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise Unavailable("bitsandbytes not installed") from e
    return bnb.optim.AdamW8bit(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)


FACTORIES: dict[str, Callable] = {
    "eightbit AdamW8bit": _eightbit,
    "torch AdamW fused": _torch_fused,
    "torch AdamW foreach": _torch_foreach,
    "torchao AdamW8bit": _torchao,
    "bitsandbytes AdamW8bit": _bitsandbytes,
}


def _tensor_bytes(t: torch.Tensor) -> int:
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def state_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from an optimizer's state (each storage counted once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:  # shared tensors counted once; also stops cycles
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return _tensor_bytes(obj)
    if isinstance(obj, dict):
        return sum(state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(state_bytes(v, seen) for v in vars(obj).values())
    return 0


def adamw_reference(p0: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """AdamW in float64 (torch.optim.AdamW's math); returns the final parameters."""
    p = p0.double().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p.mul_(1 - LR * WD)
        m.mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        denom = (v / (1 - BETAS[1] ** t)).sqrt_().add_(EPS)
        p.addcdiv_(m, denom, value=-LR / (1 - BETAS[0] ** t))
    return p


def update_error(factory: Callable, numel: int) -> float:
    """Relative error of the total update after ACC_STEPS steps vs float64 AdamW (fixed seed)."""
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(numel // 1024, 1024, generator=gen)
    grads = [torch.randn(p0.shape, generator=gen) * 0.01 for _ in range(ACC_STEPS)]
    ref = adamw_reference(p0, grads)
    p = torch.nn.Parameter(p0.clone())
    opt = factory([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return rel_error(p.detach().double() - p0.double(), ref - p0.double())


def _build(factory: Callable, init: list[torch.Tensor], grads: list[torch.Tensor], acc_numel: int) -> Built:
    params = [torch.nn.Parameter(t.clone()) for t in init]
    for p, g in zip(params, grads):
        p.grad = g
    opt = factory(params)
    opt.step()  # allocates the state
    n = sum(t.numel() for t in init)
    sbytes = state_bytes(opt.state)
    return Built(
        opt.step,
        rel_error=update_error(factory, acc_numel),
        extra={"state_bytes": sbytes, "state_bytes_per_param": sbytes / n},
    )


def run(ctx: Context) -> list[Row]:
    """All configurations of the case, as result rows."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in shapes(ctx.quick)]
    grads = [torch.randn(s, generator=gen) * 0.01 for s in shapes(ctx.quick)]
    n = sum(t.numel() for t in init)
    acc_numel = (64 if ctx.quick else 1024) * 1024
    impls = [Impl(name, lambda f=f: _build(f, init, grads, acc_numel)) for name, f in FACTORIES.items()]
    config = f"{n / 1e6:.1f}M params"
    rows = measure(ctx, "optim", config, impls)
    for r in rows:  # floor: read p and g, write p (12 B/param), read and write the state once
        if r.status == "ok" and ctx.bandwidth_gbps:
            per_param = 12 + 2 * r.extra["state_bytes_per_param"]
            r.floor_ms = per_param * n / (ctx.bandwidth_gbps * 1e9) * 1e3
            r.x_floor = r.median_ms / r.floor_ms
    return rows
