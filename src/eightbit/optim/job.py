"""What one parameter's update needs before its op runs (Optimizer8bit._prepare): the prepared job, the plan a
group's settings fix for one step, and the helpers that reduce DTensor shards and complex parameters to the local
real tensors the ops step."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..functional.optimizer import OptimHyper

try:  # DTensor parameters (FSDP2): the step works on local shards
    from torch.distributed.tensor import DTensor
except Exception:  # pragma: no cover - torch built without distributed
    DTensor = ()

__all__ = ["Job", "Plan", "all_finite", "local_tensor", "shard_groups", "sum_over"]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, as a real tensor: complex values are stepped as (real, imag) pairs, as
    torch's optimizers do (``view_as_real``), so both parts get the same per-element update and state."""
    t = t.to_local() if DTensor and isinstance(t, DTensor) else t
    return torch.view_as_real(t) if t.is_complex() else t


def shard_groups(p: torch.Tensor) -> list:
    """Process groups of the mesh dims a DTensor parameter is sharded over (empty for a plain tensor):
    whole-tensor quantities (norms, the non-finite check) are reduced over them so every shard agrees."""
    if not (DTensor and isinstance(p, DTensor)):
        return []
    return [p.device_mesh.get_group(i) for i, pl in enumerate(p.placements) if pl.is_shard()]


def sum_over(groups: list, t: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) ``t`` in place over ``groups``; returns it."""
    if groups:
        import torch.distributed as dist

        for group in groups:
            dist.all_reduce(t, group=group)
    return t


def all_finite(g: torch.Tensor, groups: list) -> bool:
    """Whether the whole gradient is finite; for a sharded one all shards agree (all skip or none)."""
    if not groups:
        lo, hi = torch.aminmax(g)  # NaN propagates into both; no gradient-sized temporary
        if g.device.type == "cpu":  # two reads, cheaper than three small tensor ops
            return math.isfinite(lo.item()) and math.isfinite(hi.item())
        return bool(torch.isfinite(lo) & torch.isfinite(hi))  # one device sync
    return sum_over(groups, (~torch.isfinite(g)).sum()).item() == 0


class Job(NamedTuple):
    """One parameter's prepared update (Optimizer8bit._prepare): the op's arguments and how to run it."""

    config: dict
    local: torch.Tensor  # the parameter's local tensor (real view of a complex one)
    work: torch.Tensor  # local, or its contiguous copy (written back after the op)
    g: torch.Tensor
    states: list
    absmaxes: list
    codes: list
    hyper: OptimHyper
    seeds: list
    rule: str
    wd_mode: int
    blocksize: int
    skipped: torch.Tensor | None
    paged: bool
    norm: bool  # the step is scaled by an update norm (LAMB, LARS, max_unorm)
    groups: list
    batch_key: tuple | None  # None: runs alone (paged, update norm, copy-back)
    # the parameter's state when its non-finite gradient check ("skip"/"raise") is left to the update norm: a
    # NaN/Inf gradient makes the norm NaN/Inf, so the gradient is only read again when the norm is not finite
    deferred_check: dict | None = None


class Plan(NamedTuple):
    """What a parameter's settings fix for its update in one step (Optimizer8bit._plan): computed once per group
    and step (a model's hundred tensors share it), or per parameter with GlobalOptimManager overrides."""

    mode: str  # the non-finite policy in effect ("skip_block" becomes "skip" where the gradient is read first)
    norm: bool
    rule: str
    wd_mode: int
    spec: tuple
    stochastic: tuple  # per state: rounded stochastically when 8-bit
    slots: tuple  # the state-dict keys of the 8-bit states, absmaxes and code maps, one tuple each
    memo: dict  # (step, grad_scale) -> OptimHyper; step -> seeds
