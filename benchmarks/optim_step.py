"""One optimizer step on a single parameter tensor, side by side in one process:
``python -m benchmarks.optim_step [n_params=20e6] [--json out.json]``.

torch AdamW (fused, foreach) and eightbit AdamW8bit (stochastic and nearest rounding of v), ``lr=1e-3`` on
``randn(n) * 0.1`` with gradient ``randn(n) * 0.01``; median of 15 steps after 3 warm-up steps, implementations
interleaved per repeat. Prints a table and writes JSON (default ``benchmarks/results/optim_step.json``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    """Run the comparison for ``argv`` (see the module docstring); prints the table and writes the JSON."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_step", description=__doc__)
    ap.add_argument("n", nargs="?", type=float, default=20e6, help="parameters (default 20e6)")
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "optim_step.json")
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args(argv)
    from eightbit.optim import AdamW8bit

    torch.set_num_threads(min(2, torch.get_num_threads()))
    n = int(args.n)
    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
        "eightbit AdamW8bit": lambda ps: AdamW8bit(ps, lr=1e-3),
        "eightbit AdamW8bit, nearest v": lambda ps: AdamW8bit(ps, lr=1e-3, stochastic_rounding=False),
    }
    gen = torch.Generator().manual_seed(0)
    runs = {}
    for name, make in makers.items():
        p = torch.nn.Parameter(torch.randn(n, generator=gen) * 0.1)
        p.grad = torch.randn(n, generator=gen) * 0.01
        opt = make([p])
        for _ in range(3):
            opt.step()
        runs[name] = (opt, [])
    for _ in range(args.steps):
        for opt, times in runs.values():
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
    fused = sorted(runs["torch AdamW fused"][1])[args.steps // 2]
    rows = []
    print(f"| implementation ({n / 1e6:.1f}M params) | median ms | x fused |\n|---|---:|---:|")
    for name, (_, times) in runs.items():
        med = sorted(times)[args.steps // 2]
        rows.append({"impl": name, "median_ms": med * 1e3, "x_fused": med / fused})
        print(f"| {name} | {med * 1e3:.1f} | {med / fused:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "python -m benchmarks.optim_step", "params": n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
