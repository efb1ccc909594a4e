"""torch.distributed helpers for eightbit optimizers: sharded checkpoints (DCP) and state memory.

DDP and ``ZeroRedundancyOptimizer`` need nothing from this module: eightbit optimizers are ordinary
``torch.optim.Optimizer`` subclasses. FSDP2 (``fully_shard``, DTensor parameters) needs it for
checkpoints: an eightbit optimizer keeps the state of a DTensor parameter as *plain* local tensors
(uint8 codes, float32 per-block absmax, counters) quantized block-wise over the local shard. Plain
tensors under the same key on every rank look replicated to ``torch.distributed.checkpoint`` (DCP),
which would save one rank's copy and load it everywhere: a silent wrong resume. ``get_state_dict``
wraps each such tensor as a DTensor stacked over the shard ranks, so every rank saves and loads its own
piece; ``set_state_dict`` unwraps them. Usage, identical on every rank::

    from eightbit.integrations.distributed import get_state_dict, set_state_dict
    import torch.distributed.checkpoint as dcp

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    ...  # later, on a freshly built, sharded model and optimizer
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)

Block boundaries of a sharded parameter's 8-bit state follow its local shard, so a checkpoint resumes
only on the same world size and sharding (loading elsewhere raises ValueError on the size mismatch).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint import state_dict as _dsd
from torch.distributed.tensor import DTensor, Replicate, Shard

__all__ = ["get_state_dict", "set_state_dict", "optimizer_state_bytes"]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state held by this rank (local shards of DTensors; counters included; a tensor shared by
    several parameters, such as eightbit's code maps, counted once).

    Works for any optimizer, including ``ZeroRedundancyOptimizer`` (its wrapped local optimizer)."""
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard here
    total = 0
    seen: set[tuple[int, int]] = set()
    for st in inner.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                t = v.to_local() if isinstance(v, DTensor) else v
                key = (t.untyped_storage().data_ptr(), t.storage_offset())
                if key in seen and t.numel():
                    continue
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def _fqn(model: nn.Module, name: str) -> str:
    """The key torch's get_state_dict uses for parameter ``name`` (wrapper prefixes removed)."""
    get_fqns = getattr(_dsd, "_get_fqns", None)  # private in torch; the fallback covers DDP/compile/checkpointing
    if get_fqns is not None:
        return next(iter(get_fqns(model, name)))
    for prefix in ("module.", "_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


def _sharded_params(model: nn.Module) -> dict[str, DTensor]:
    """FQN (as used by torch's get_state_dict) -> DTensor parameter that is sharded on some mesh dim."""
    out = {}
    for name, p in model.named_parameters():
        if isinstance(p, DTensor) and any(pl.is_shard() for pl in p.placements):
            out[_fqn(model, name)] = p
    return out


def _stack_layout(p: DTensor) -> tuple[list, tuple[int, ...]]:
    """Placements and leading global shape of a tensor stacked over the ranks that hold different shards
    of ``p``: one leading dim per sharded mesh dim (sharded there), replicated elsewhere."""
    placements, lead, k = [], [], 0
    for i, pl in enumerate(p.placements):
        if pl.is_shard():
            placements.append(Shard(k))
            lead.append(p.device_mesh.size(i))
            k += 1
        else:
            placements.append(Replicate())
    return placements, tuple(lead)


def _local_entries(osd: dict[str, Any], sharded: dict[str, DTensor]):
    """(fqn, state name, tensor) of every plain state tensor of a sharded parameter."""
    for fqn, st in osd.get("state", {}).items():
        if fqn in sharded:
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor):
                    yield fqn, k, v


def _max_lengths(entries: list[tuple[str, str, torch.Tensor]]) -> dict[tuple[str, str], int]:
    """Longest local length of each entry over all ranks (one all_gather_object for the whole dict)."""
    mine = {(f, k): v.numel() for f, k, v in entries}
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    out: dict[tuple[str, str], int] = {}
    for d in gathered:
        for key, n in d.items():
            out[key] = max(out.get(key, 0), n)
    return out


def get_state_dict(
    model: nn.Module, optimizers: torch.optim.Optimizer, *, options: _dsd.StateDictOptions | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``torch.distributed.checkpoint.state_dict.get_state_dict`` made DCP-safe for eightbit optimizers.

    Returns (model_state_dict, optimizer_state_dict). For a parameter sharded as a DTensor, each plain
    local state tensor (any dtype, any shape) becomes a DTensor of global shape (*shards, L): this rank's
    tensor flattened, zero-padded to L (the longest over ranks), in its own row. Other entries are
    torch's. Collective: call on every rank. ``options.full_state_dict=True`` is not supported for
    sharded 8-bit state (its blocks are per shard) and raises ValueError.
    """
    model_sd, optim_sd = _dsd.get_state_dict(model, optimizers, options=options)
    sharded = _sharded_params(model)
    entries = list(_local_entries(optim_sd, sharded))
    if entries and options is not None and options.full_state_dict:
        raise ValueError("full_state_dict=True cannot gather per-shard 8-bit optimizer state; use sharded DCP")
    lengths = _max_lengths(entries)
    # torch's optimizer state_dict shares the per-parameter dicts with the live optimizer: copy before editing
    for fqn in {fqn for fqn, _, _ in entries}:
        optim_sd["state"][fqn] = dict(optim_sd["state"][fqn])
    for fqn, k, v in entries:
        p = sharded[fqn]
        placements, lead = _stack_layout(p)
        n = lengths[(fqn, k)]
        flat = torch.zeros(n, dtype=v.dtype, device=v.device)
        flat[: v.numel()] = v.reshape(-1)
        local = flat.view(*([1] * len(lead)), n)
        shape = (*lead, n)
        stride = torch.empty(shape, device="meta").stride()
        optim_sd["state"][fqn][k] = DTensor.from_local(
            local, p.device_mesh, placements, run_check=False, shape=shape, stride=stride
        )
    return model_sd, optim_sd


def set_state_dict(
    model: nn.Module,
    optimizers: torch.optim.Optimizer,
    *,
    model_state_dict: dict[str, Any],
    optim_state_dict: dict[str, Any],
    options: _dsd.StateDictOptions | None = None,
) -> None:
    """Inverse of :func:`get_state_dict`: unwrap the stacked per-shard state and load everything with
    ``torch.distributed.checkpoint.state_dict.set_state_dict``.

    The optimizer must already hold state of the same layout (``get_state_dict`` on the fresh optimizer,
    as done before ``dcp.load``, creates it). Raises ValueError when a saved piece is shorter than the
    live state (checkpoint written with another world size, sharding or blocksize)."""
    live = _dsd.get_optimizer_state_dict(model, optimizers, options=options)
    sharded = _sharded_params(model)
    optim_state_dict = dict(optim_state_dict)  # the caller's dicts stay as they are
    state = optim_state_dict["state"] = dict(optim_state_dict.get("state", {}))
    for fqn in list(state):
        if fqn not in sharded:
            continue
        st = state[fqn] = dict(state[fqn])
        for k, v in list(st.items()):
            if not isinstance(v, DTensor) or isinstance(live["state"].get(fqn, {}).get(k), DTensor):
                continue
            ref = live["state"][fqn][k]
            flat = v.to_local().reshape(-1)
            if flat.numel() < ref.numel():
                raise ValueError(
                    f"optimizer state {fqn}.{k}: checkpoint piece has {flat.numel()} elements, this rank needs "
                    f"{ref.numel()} (different world size, sharding or blocksize?)"
                )
            st[k] = flat[: ref.numel()].view(ref.shape).clone()
    _dsd.set_state_dict(
        model, optimizers, model_state_dict=model_state_dict, optim_state_dict=optim_state_dict, options=options
    )
