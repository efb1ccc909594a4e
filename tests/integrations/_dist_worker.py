"""Worker for tests/integrations/test_distributed.py: one rank of a 2-rank gloo group on CPU.

Run by the test as ``python -m tests.integrations._dist_worker --out DIR`` with RANK, WORLD_SIZE,
MASTER_ADDR=127.0.0.1 and MASTER_PORT in the environment. One process group serves every scenario (its
start is the main cost). Each scenario returns (json-able results, named tensors); rank 0 writes
DIR/results.json and DIR/tensors.safetensors. A failing scenario records its traceback and the others
still run. The single-process references (``train_single``, ``train_lora_single``) live here too, so
the test runs exactly the same model, data and optimizer code without a process group.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import tempfile
import time
import traceback
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import eightbit.optim as eo

IN, HID1, HID2 = 64, 128, 100
GLOBAL_BATCH = 16
STEPS = 6
LR = 3e-3
BLOCKSIZE = 512  # several blocks per weight; under FSDP2 fc1's shard starts on a block boundary, fc2/fc3's do not

# name -> factory(params) ; keyword arguments as a user would write them
_OPTIM_ARGS: dict[str, tuple[Callable, float, dict[str, Any]]] = {
    "AdamW": (eo.AdamW, LR, dict(betas=(0.9, 0.99), weight_decay=0.01)),
    "SGD": (eo.SGD, 0.05, dict(momentum=0.9)),
    "Lion": (eo.Lion, LR / 3, dict(weight_decay=0.01)),
    "LAMB": (eo.LAMB, 1e-2, dict(weight_decay=0.01)),
}


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    """``AdamW8bit``, ``SGD32bit``, ... with this test's hyperparameters."""
    name, clip = name.removesuffix("+clip"), name.endswith("+clip")  # +clip: percentile clipping at 50
    base, bits = name.removesuffix("8bit").removesuffix("32bit"), 8 if name.endswith("8bit") else 32
    cls, lr, kw = _OPTIM_ARGS[base]
    return cls(params, lr, optim_bits=bits, blocksize=BLOCKSIZE, percentile_clipping=50 if clip else 100, **kw)


class Net(nn.Module):
    """Three-layer MLP: fc1 (128x64), fc2 (100x128), fc3 (64x100); weights >= 4096 elements get 8-bit state."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HID1)
        self.fc2 = nn.Linear(HID1, HID2)
        self.fc3 = nn.Linear(HID2, IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, IN) -> (B, IN)
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def make_model(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def batch(seed: int, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch of ``step`` (same data for every world size)."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    x = torch.randn(GLOBAL_BATCH, IN, generator=g)
    y = torch.sin(2 * x).roll(1, dims=1)
    per = GLOBAL_BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def train(
    model: nn.Module, opt: torch.optim.Optimizer, seed: int, steps: range, rank: int = 0, world: int = 1,
    before_step: Callable[[], None] | None = None,
) -> list[float]:
    losses = []
    for s in steps:
        x, y = batch(seed, s, rank, world)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """name (without wrapper prefixes) -> full fp32 parameter (DTensors gathered: collective)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("module.")] = t.detach().clone()
    return out


def train_single(opt_name: str, seed: int, shards: int = 1, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """Single-process reference: whole global batch per step.

    ``shards > 1`` emulates FSDP2's optimizer view: each parameter is stepped as ``shards`` separate
    tensors (its dim-0 chunks, as ``fully_shard`` splits it), aliasing the full parameter, so 8-bit blocks
    (and min_8bit_size decisions) follow the shards exactly as on the ranks."""
    model = make_model(seed)
    if shards == 1:
        train(model, make_optimizer(opt_name, model.parameters()), seed, range(steps))
        return full_params(model)
    pairs = [(p, [nn.Parameter(c) for c in p.data.chunk(shards)]) for p in model.parameters()]
    opt = make_optimizer(opt_name, [c for _, cs in pairs for c in cs])
    # 8-bit or not is decided on the whole parameter's size, as the optimizer does for a DTensor's shard
    min_8bit = opt.defaults["min_8bit_size"]
    opt.param_groups = []
    for big in (True, False):
        chunks = [c for p, cs in pairs if (p.numel() >= min_8bit) == big for c in cs]
        opt.add_param_group({"params": chunks, "min_8bit_size": 0 if big else 2**62})

    def split_grads() -> None:
        for p, cs in pairs:
            for c, g in zip(cs, p.grad.chunk(shards)):
                c.grad = g
            p.grad = None  # the optimizer zeroes only the chunks' grads

    train(model, opt, seed, range(steps), before_step=split_grads)
    return full_params(model)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----- LoRA on Linear8bitLt --------------------------------------------------------------------------
LORA_STEPS = 5


def make_lora_model(seed: int) -> nn.Module:
    """Net with every Linear replaced by Linear8bitLt, plus LoRA adapters (r=4) on fc1 and fc2 via PEFT."""
    import eightbit.integrations.peft  # noqa: F401  (registers the Linear8bitLt LoRA layer)
    from peft import LoraConfig, get_peft_model

    from eightbit.nn import Linear8bitLt

    net = make_model(seed)
    for name in ("fc1", "fc2", "fc3"):
        setattr(net, name, Linear8bitLt.from_linear(getattr(net, name)))
    torch.manual_seed(seed + 1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], lora_dropout=0.0, init_lora_weights="gaussian")
    return get_peft_model(net, cfg)


def lora_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return eo.AdamW8bit(trainable, 1e-2, min_8bit_size=256, blocksize=64)  # LoRA matrices are small


def int8_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): b.clone() for n, b in model.named_buffers() if b.dtype == torch.int8}


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_lora_single(seed: int, optim_bits: int = 8) -> dict[str, torch.Tensor]:
    model = make_lora_model(seed)
    opt = lora_optimizer(model)
    for g in opt.param_groups:
        g["optim_bits"] = optim_bits
    train(model, opt, seed, range(LORA_STEPS))
    return trainable_params(model)


# ----- scenarios (run on every rank; collective) -----------------------------------------------------
def _gather_obj(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _state_dtypes(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, str]:
    """parameter name -> dtype of its first per-element state (uint8 = 8-bit, float32 = 32-bit)."""
    inner = getattr(opt, "optim", opt)
    names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
    out = {}
    for p, st in inner.state.items():
        for k in ("state1", "exp_avg", "momentum_buffer", "exp_avg_sq"):
            if k in st:
                out[names[id(p)]] = str(st[k].dtype).removeprefix("torch.")
                break
    return out


def scenario_ddp(rank: int, world: int, seed: int, opt_name: str):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from eightbit.integrations.distributed import optimizer_state_bytes

    model = DDP(make_model(seed))
    opt = make_optimizer(opt_name, model.parameters())
    losses = train(model, opt, seed, range(STEPS), rank, world)
    params = full_params(model)
    res = {
        "digests": _gather_obj(digest(params)),
        "state_bytes": _gather_obj(optimizer_state_bytes(opt)),
        "state_dtypes": _state_dtypes(opt, model),
        "losses": losses,
    }
    return res, {f"ddp_{opt_name}.{k}": v for k, v in params.items()}


def _stepped(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Take one step with unit gradients so every state tensor exists (memory measurement only)."""
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    return opt


def _unsharded_bytes(opt_name: str, seed: int) -> int:
    from eightbit.integrations.distributed import optimizer_state_bytes

    return optimizer_state_bytes(_stepped(make_optimizer(opt_name, make_model(seed).parameters())))


def scenario_zero(rank: int, world: int, seed: int):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from eightbit.integrations.distributed import optimizer_state_bytes

    model = DDP(make_model(seed))
    cls, lr, kw = _OPTIM_ARGS["AdamW"]
    opt = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=eo.AdamW8bit, lr=lr, blocksize=BLOCKSIZE, **kw
    )
    train(model, opt, seed, range(STEPS), rank, world)
    params = full_params(model)
    res = {
        "digests": _gather_obj(digest(params)),
        "state_bytes": _gather_obj(optimizer_state_bytes(opt)),
        "unsharded_state_bytes": _unsharded_bytes("AdamW8bit", seed),
        "unsharded_32bit_state_bytes": _unsharded_bytes("AdamW32bit", seed),
        "state_dtypes": _gather_obj(_state_dtypes(opt, model)),
        "params_per_rank": _gather_obj(sum(p.numel() for g in opt.optim.param_groups for p in g["params"])),
    }
    return res, {f"zero.{k}": v for k, v in params.items()}


def scenario_zero_checkpoint(rank: int, world: int, seed: int):
    """ZeRO-1: consolidate_state_dict(to=0) after 3 steps, 3 more steps (A); a fresh model/optimizer loads
    the consolidated dict (broadcast from rank 0) and runs the same 3 steps (B)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def build(s: int):
        model = DDP(make_model(s))
        cls, lr, kw = _OPTIM_ARGS["AdamW"]
        return model, ZeroRedundancyOptimizer(model.parameters(), optimizer_class=eo.AdamW8bit, lr=lr,
                                              blocksize=BLOCKSIZE, **kw)

    model, opt = build(seed)
    train(model, opt, seed, range(3), rank, world)
    opt.consolidate_state_dict(to=0)
    # rank 0's consolidated dict shares tensors with its live state: copy before training on
    box = [copy.deepcopy(opt.state_dict()) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    model_sd = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, opt, seed, range(3, 6), rank, world)
    model2, opt2 = build(seed + 7)
    model2.load_state_dict(model_sd)
    opt2.load_state_dict(box[0])
    dtypes = _state_dtypes(opt2, model2)
    train(model2, opt2, seed, range(3, 6), rank, world)
    a, b = full_params(model), full_params(model2)
    same = all(torch.equal(a[k], b[k]) for k in a)
    return {"params_identical": _gather_obj(same), "state_dtypes": _gather_obj(dtypes)}, {}


def fsdp_model(seed: int) -> nn.Module:
    """Net with fully_shard (FSDP2) on each layer and the root: parameters become DTensors sharded on dim 0."""
    from torch.distributed.fsdp import fully_shard

    model = make_model(seed)
    for layer in (model.fc1, model.fc2, model.fc3):
        fully_shard(layer)
    fully_shard(model)
    return model


def scenario_fsdp2(rank: int, world: int, seed: int, opt_name: str):
    from eightbit.integrations.distributed import optimizer_state_bytes

    model = fsdp_model(seed)
    opt = make_optimizer(opt_name, model.parameters())
    losses = train(model, opt, seed, range(STEPS), rank, world)
    params = full_params(model)
    res = {
        "state_bytes": _gather_obj(optimizer_state_bytes(opt)),
        "state_dtypes": _gather_obj(_state_dtypes(opt, model)),
        "local_numel": _gather_obj({n: p.to_local().numel() for n, p in model.named_parameters()}),
        "losses": losses,
    }
    return res, {f"fsdp2_{opt_name}.{k}": v for k, v in params.items()}


def _opt_state_flat(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        f"{names[id(p)]}.{k}": (v.to_local() if hasattr(v, "to_local") else v).clone()
        for p, st in opt.state.items() for k, v in st.items() if isinstance(v, torch.Tensor)
    }


def scenario_dcp(rank: int, world: int, seed: int, kind: str, ckpt_root: str):
    """Train k steps, DCP-save, train N more (A); fresh model/optimizer, DCP-load, same N steps (B).

    Also records what plain torch get_state_dict/set_state_dict + DCP give for FSDP2 (no eightbit helper)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as torch_sd
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.nn.parallel import DistributedDataParallel as DDP

    from eightbit.integrations.distributed import get_state_dict, set_state_dict

    build = fsdp_model if kind == "fsdp2" else (lambda s: DDP(make_model(s)))
    k, n = 3, 3
    path, naive_path = os.path.join(ckpt_root, kind), os.path.join(ckpt_root, kind + "_torch_only")
    model = build(seed)
    opt = make_optimizer("AdamW8bit", model.parameters())
    train(model, opt, seed, range(k), rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    nmsd, nosd = torch_sd.get_state_dict(model, opt)
    dcp.save({"model": nmsd, "optim": nosd}, checkpoint_id=naive_path)
    train(model, opt, seed, range(k, k + n), rank, world)
    a_params, a_state = full_params(model), _opt_state_flat(opt, model)

    def resume(helpers) -> tuple[dict, dict]:
        get, put, where = helpers
        model2 = build(seed + 7)  # another init: everything must come from the checkpoint
        opt2 = make_optimizer("AdamW8bit", model2.parameters())
        m2, o2 = get(model2, opt2)
        dcp.load({"model": m2, "optim": o2}, checkpoint_id=where)
        put(model2, opt2, model_state_dict=m2, optim_state_dict=o2)
        train(model2, opt2, seed, range(k, k + n), rank, world)
        return full_params(model2), _opt_state_flat(opt2, model2)

    b_params, b_state = resume((get_state_dict, set_state_dict, path))
    t_params, _ = resume((torch_sd.get_state_dict, torch_sd.set_state_dict, naive_path))

    mismatch = None
    if kind == "fsdp2":  # a checkpoint of blocksize-512 state loaded into a blocksize-1024 optimizer
        model3 = build(seed)
        opt3 = eo.AdamW8bit(model3.parameters(), LR, blocksize=2 * BLOCKSIZE)
        m3, o3 = get_state_dict(model3, opt3)
        try:
            dcp.load({"model": m3, "optim": o3}, checkpoint_id=path)
            set_state_dict(model3, opt3, model_state_dict=m3, optim_state_dict=o3)
        except CheckpointException as e:  # expected: DCP's size check (a BaseException, not an Exception)
            mismatch = f"{type(e).__name__}, size mismatch reported: {'Size mismatch' in str(e)}"

    def same(x: dict, y: dict) -> bool:
        return x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x)

    res = {
        "params_identical": _gather_obj(same(a_params, b_params)),
        "state_identical": _gather_obj(same(a_state, b_state)),
        "n_state_tensors": len(a_state),
        "torch_only_params_identical": _gather_obj(same(a_params, t_params)),
        "mismatch_error": _gather_obj(mismatch),
    }
    return res, {}


def scenario_lora(rank: int, world: int, seed: int):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_lora_model(seed)
    before = int8_buffers(model)
    ddp = DDP(model)
    opt = lora_optimizer(ddp)
    losses = train(ddp, opt, seed, range(LORA_STEPS), rank, world)
    trainable = trainable_params(ddp)
    after = int8_buffers(model)
    res = {
        "digests": _gather_obj(digest(trainable)),
        "int8_unchanged": _gather_obj(len(before) > 0 and all(torch.equal(before[k], after[k]) for k in before)),
        "n_int8_buffers": len(before),
        "lora_layers": sorted(type(m).__name__ for m in model.modules() if type(m).__name__ == "LoraLinear8bitLt"),
        "losses": losses,
        "state_dtypes": sorted({str(st.get("state1", st.get("exp_avg")).dtype).removeprefix("torch.") for st in opt.state.values()}),
    }
    return res, {f"lora.{k}": v for k, v in trainable.items()}


def scenario_fsdp2_edges(rank: int, world: int, seed: int):
    """A weight with fewer rows than ranks (rank 1 holds an empty shard) and a NaN gradient on one shard."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN, IN), nn.Linear(IN, 1))  # second weight: (1, 64) -> shards (1, 64), (0, 64)
    single = nn.Sequential(nn.Linear(IN, IN), nn.Linear(IN, 1))
    single.load_state_dict(model.state_dict())
    single32 = nn.Sequential(nn.Linear(IN, IN), nn.Linear(IN, 1))  # the 32-bit run: the 8-bit rounding's size
    single32.load_state_dict(model.state_dict())
    for m in model:
        fully_shard(m)
    fully_shard(model)
    opt = eo.LAMB8bit(model.parameters(), 1e-2, min_8bit_size=0, blocksize=64)
    ref_opt = eo.LAMB8bit(single.parameters(), 1e-2, min_8bit_size=0, blocksize=64)
    ref32_opt = eo.LAMB32bit(single32.parameters(), 1e-2)
    for s in range(3):
        x, y = batch(seed, s, rank, world)
        F.mse_loss(model(x), y[:, :1]).backward()
        xs, ys = batch(seed, s)
        F.mse_loss(single(xs), ys[:, :1]).backward()
        F.mse_loss(single32(xs), ys[:, :1]).backward()
        if s == 2:  # a NaN in rank 0's shard of the first weight only: every shard must skip
            if rank == 0:
                model[0].weight.grad.to_local()[0, 0] = float("nan")
            single[0].weight.grad[0, 0] = float("nan")
            single32[0].weight.grad[0, 0] = float("nan")
        for o in (opt, ref_opt, ref32_opt):
            o.step()
            o.zero_grad()
    full = full_params(model)
    ref = {k: v.detach() for k, v in single.named_parameters()}
    ref32 = {k: v.detach() for k, v in single32.named_parameters()}
    st = opt.state[model[1].weight]
    res = {
        "local_rows": _gather_obj(model[1].weight.to_local().shape[0]),
        "state_keys": _gather_obj(sorted(st)),
        "steps": _gather_obj([int(opt.state[p]["step"]) for p in model.parameters()]),
        "skipped": _gather_obj([int(opt.state[p]["skipped_steps"]) for p in model.parameters()]),
        "rel_diff_to_single": {k: float((full[k] - ref[k]).norm() / (ref[k].norm())) for k in full},
        "rel_8bit_vs_32bit": {k: float((ref[k] - ref32[k]).norm() / (ref32[k].norm())) for k in full},
    }
    return res, {}


DDP_OPTIMIZERS = ("AdamW8bit", "SGD8bit", "Lion8bit")
FSDP2_OPTIMIZERS = ("AdamW8bit", "SGD8bit", "LAMB8bit")
FSDP2_32BIT = ("LAMB32bit", "AdamW32bit+clip")  # whole-tensor norms: must equal the unsharded run


def scenarios(seed: int, ckpt_root: str) -> list[tuple[str, Callable]]:
    """(name, fn(rank, world) -> (results, tensors)) in run order."""
    out: list[tuple[str, Callable]] = []
    for o in DDP_OPTIMIZERS:
        out.append((f"ddp_{o}", lambda r, w, o=o: scenario_ddp(r, w, seed, o)))
    out.append(("zero", lambda r, w: scenario_zero(r, w, seed)))
    out.append(("zero_checkpoint", lambda r, w: scenario_zero_checkpoint(r, w, seed)))
    for o in FSDP2_OPTIMIZERS + FSDP2_32BIT:
        out.append((f"fsdp2_{o}", lambda r, w, o=o: scenario_fsdp2(r, w, seed, o)))
    out.append(("fsdp2_edges", lambda r, w: scenario_fsdp2_edges(r, w, seed)))
    for kind in ("fsdp2", "ddp"):
        out.append((f"dcp_{kind}", lambda r, w, kind=kind: scenario_dcp(r, w, seed, kind, ckpt_root)))
    out.append(("lora", lambda r, w: scenario_lora(r, w, seed)))
    return out


def main() -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.api import CheckpointException

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, Any] = {"world_size": world, "seed": args.seed}
    tensors: dict[str, torch.Tensor] = {}
    only = set(filter(None, args.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_root = _gather_obj(tmp)[0]  # every rank writes the checkpoint into rank 0's temp dir
        for name, fn in scenarios(args.seed, ckpt_root):
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            error = None
            try:
                res, ts = fn(rank, world)
                results[name] = res
                tensors.update(ts)
            except (Exception, CheckpointException):  # recorded; the test of this scenario fails with the traceback
                error = f"rank {rank}: {traceback.format_exc()}"
            errors = [e for e in _gather_obj(error) if e]
            if errors:
                results[name] = {"error": "\n".join(errors)}
            results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        dist.barrier()
    if rank == 0:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "tensors.safetensors"))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
