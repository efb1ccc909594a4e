"""Data-parallel training with an eightbit 8-bit optimizer: DDP, ZeRO-1 or FSDP2, optional DCP checkpoint.

    torchrun --nproc_per_node=2 examples/distributed_train.py --mode ddp
    torchrun --nproc_per_node=2 examples/distributed_train.py --mode zero
    torchrun --nproc_per_node=2 examples/distributed_train.py --mode fsdp2 --checkpoint /tmp/ckpt

gloo on CPU, NCCL when CUDA is available (one GPU per rank: LOCAL_RANK). A small MLP regression on
synthetic data (no download). Each rank prints its optimizer-state bytes next to what an unsharded
32-bit AdamW would hold; rank 0 prints the loss. With --checkpoint the run is saved half way with
torch.distributed.checkpoint, reloaded into a freshly built model/optimizer and continued; the final
parameters are compared with the uninterrupted run (they must be bit-identical).
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import eightbit.optim as eo
from eightbit.integrations.distributed import get_state_dict, optimizer_state_bytes, set_state_dict


def build_model(width: int, depth: int, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, width))
    return nn.Sequential(*layers).to(device)


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for m in model:
            if isinstance(m, nn.Linear):
                fully_shard(m)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def make_optimizer(model: nn.Module, mode: str, lr: float) -> torch.optim.Optimizer:
    if mode == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=eo.AdamW8bit, lr=lr, weight_decay=0.01)
    return eo.AdamW8bit(model.parameters(), lr, weight_decay=0.01)


def batch(step: int, rank: int, world: int, per_rank: int, width: int, device: torch.device):
    """This rank's slice of a global batch; targets from a fixed random teacher (learnable)."""
    teacher = torch.randn(width, width, generator=torch.Generator().manual_seed(0)) / width**0.5
    g = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(per_rank * world, width, generator=g)[rank * per_rank:(rank + 1) * per_rank]
    return x.to(device), torch.tanh(x @ teacher).to(device)


def run(model, opt, steps: range, args, rank: int, world: int, device) -> None:
    for s in steps:
        x, y = batch(s, rank, world, args.batch_size, args.width, device)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0 and (s % max(1, args.steps // 5) == 0 or s == args.steps - 1):
            print(f"step {s:4d}  loss {loss.item():.5f}", flush=True)


def full_params(model: nn.Module) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for p in model.parameters()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ddp", "zero", "fsdp2"], default="ddp")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--checkpoint", default=None, help="DCP directory: save half way, resume, compare")
    args = ap.parse_args()

    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.checkpoint and args.mode == "zero":
        raise SystemExit("--checkpoint needs --mode ddp or fsdp2 (ZeRO: consolidate_state_dict(to=0), save on rank 0)")

    model = wrap(build_model(args.width, args.depth, device), args.mode, device)
    opt = make_optimizer(model, args.mode, args.lr)
    half = args.steps // 2 if args.checkpoint else args.steps
    run(model, opt, range(half), args, rank, world, device)

    n_params = sum(p.numel() for p in build_model(args.width, args.depth, "meta").parameters())
    mine = optimizer_state_bytes(opt)
    sizes: list = [None] * world
    dist.all_gather_object(sizes, mine)
    if rank == 0:
        print(f"[{args.mode}] {world} ranks, {n_params / 1e6:.2f} M parameters; optimizer state per rank: "
              + ", ".join(f"{b / 2**20:.2f} MiB" for b in sizes)
              + f"; unsharded 32-bit AdamW would hold {8 * n_params / 2**20:.2f} MiB", flush=True)

    if args.checkpoint:
        import torch.distributed.checkpoint as dcp

        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=args.checkpoint)
        run(model, opt, range(half, args.steps), args, rank, world, device)
        reference = full_params(model)

        model = wrap(build_model(args.width, args.depth, device, seed=1), args.mode, device)
        opt = make_optimizer(model, args.mode, args.lr)
        msd, osd = get_state_dict(model, opt)
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=args.checkpoint)
        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
        if rank == 0:
            print(f"resumed from {args.checkpoint} at step {half}", flush=True)
        run(model, opt, range(half, args.steps), args, rank, world, device)
        same = all(torch.equal(a, b) for a, b in zip(reference, full_params(model)))
        if rank == 0:
            print(f"resumed run bit-identical to the uninterrupted one: {same}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
