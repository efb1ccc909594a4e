"""One optimizer step on a single parameter tensor, side by side in one process:
``python -m benchmarks.optim_step [n_params=20e6] [--others | --minilm] [--dtype bfloat16|float16] [--json out.json]``.

torch AdamW (fused, foreach) and eightbit AdamW8bit (stochastic and nearest rounding of v), ``lr=1e-3`` on
``randn(n) * 0.1`` with gradient ``randn(n) * 0.01``; median of 15 steps after 3 warm-up steps, implementations
interleaved per repeat. ``--others``: instead, every 8-bit optimizer family on the binary and the decimal state
map beside torch's fused (or foreach) form. ``--minilm``: instead, AdamW8bit and torch's fused AdamW over the
parameters of the real MiniLM (103 tensors, 22.7M values; small tensors keep 32-bit state). Prints a table and
writes JSON (default ``benchmarks/results/optim_step.json``; ``optim_step_others.json``, ``optim_step_minilm.json``;
``--dtype`` adds ``_bfloat16`` / ``_float16`` to the name).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch


def main(argv: list[str] | None = None) -> None:
    """Run the comparison for ``argv`` (see the module docstring); prints the table and writes the JSON."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_step", description=__doc__)
    ap.add_argument("n", nargs="?", type=float, default=20e6, help="parameters (default 20e6)")
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "optim_step.json")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--others", action="store_true", help="every 8-bit optimizer, binary vs decimal map vs torch")
    ap.add_argument("--minilm", action="store_true", help="AdamW8bit vs fused AdamW over MiniLM's parameters")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="parameter and gradient dtype of every comparison (default float32)")
    args = ap.parse_args(argv)
    from eightbit.optim import AdamW8bit

    torch.set_num_threads(min(2, torch.get_num_threads()))
    n, dtype = int(args.n), getattr(torch, args.dtype)
    suffix = "" if args.dtype == "float32" else "_" + args.dtype  # bf16/fp16 results beside the float32 ones
    if args.others:
        _others(n, args.steps, args.json.with_name(f"optim_step_others{suffix}.json"), dtype)
        return
    if args.minilm:
        _minilm(args.steps, args.json.with_name(f"optim_step_minilm{suffix}.json"), dtype)
        return
    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
        "eightbit AdamW8bit": lambda ps: AdamW8bit(ps, lr=1e-3),
        "eightbit AdamW8bit, nearest v": lambda ps: AdamW8bit(ps, lr=1e-3, stochastic_rounding=False),
    }
    ms = _time(makers, lambda gen: _tensor(n, gen, dtype), args.steps)
    fused = ms["torch AdamW fused"]
    rows = []
    print(f"| implementation ({n / 1e6:.1f}M {args.dtype} params) | median ms | x fused |\n|---|---:|---:|")
    for name, med in ms.items():
        rows.append({"impl": name, "median_ms": med, "x_fused": med / fused})
        print(f"| {name} | {med:.1f} | {med / fused:.2f} |")
    out = args.json.with_name(f"{args.json.stem}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.optim_step", "params": n, "dtype": args.dtype,
                                     "rows": rows}, indent=1))


def _tensor(n: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """One parameter of ``n`` values (``randn * 0.1``) with a gradient (``randn * 0.01``), both in ``dtype``."""
    p = torch.nn.Parameter((torch.randn(n, generator=gen) * 0.1).to(dtype))
    p.grad = (torch.randn(n, generator=gen) * 0.01).to(dtype)
    return [p]


def _time(makers: dict, params: Callable[[torch.Generator], list], steps: int) -> dict[str, float]:
    """Median ms per step of each optimizer maker on its own copy of ``params(gen)``, 3 warm-up steps, the
    optimizers interleaved per repeat."""
    gen = torch.Generator().manual_seed(0)
    runs = {}
    for name, make in makers.items():
        opt = make(params(gen))
        for _ in range(3):
            opt.step()
        runs[name] = (opt, [])
    for _ in range(steps):
        for opt, times in runs.values():
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
    return {name: sorted(times)[steps // 2] * 1e3 for name, (_, times) in runs.items()}


def _minilm(steps: int, out: Path, dtype: torch.dtype = torch.float32) -> None:
    import eightbit.optim as O
    from eightbit.models.minilm import load_minilm

    model, _ = load_minilm()

    def params(gen: torch.Generator) -> list[torch.nn.Parameter]:
        ps = [torch.nn.Parameter(p.detach().to(dtype)) for p in model.parameters()]
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=gen) * 0.01).to(dtype)
        return ps

    makers = {"torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
              "eightbit AdamW8bit": lambda ps: O.AdamW8bit(ps, lr=1e-3)}
    ms = _time(makers, params, steps)
    fused = ms["torch AdamW fused"]
    print(f"| MiniLM's parameters (103 tensors, 22.7M, {str(dtype)[6:]}) | median ms | x fused |\n|---|---:|---:|")
    for name, v in ms.items():
        print(f"| {name} | {v:.1f} | {v / fused:.2f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.optim_step --minilm", "dtype": str(dtype)[6:], "ms": ms},
                              indent=1))


def _others(n: int, steps: int, out: Path, dtype: torch.dtype = torch.float32) -> None:
    import eightbit.optim as O

    families = {  # name: (eightbit class, its arguments, torch's form or None)
        "SGD momentum": (O.SGD8bit, dict(lr=1e-2, momentum=0.9),
                         lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, fused=True)),
        "RMSprop": (O.RMSprop8bit, dict(lr=1e-3), lambda ps: torch.optim.RMSprop(ps, lr=1e-3, foreach=True)),
        "Adagrad": (O.Adagrad8bit, dict(lr=1e-2), lambda ps: torch.optim.Adagrad(ps, lr=1e-2, fused=True)),
        "Lion": (O.Lion8bit, dict(lr=1e-4), None),
        "AdamW": (O.AdamW8bit, dict(lr=1e-3), lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
        # an update norm first (a second pass) and the parameter's norm: torch has no LAMB or LARS, and no AdEMAMix
        "LAMB": (O.LAMB8bit, dict(lr=1e-3, weight_decay=0.01), None),
        "LARS": (O.LARS8bit, dict(lr=1e-2, momentum=0.9), None),
        "AdEMAMix (3 states)": (O.AdEMAMix8bit, dict(lr=1e-3), None),
    }
    rows = []
    print(f"| optimizer ({n / 1e6:.1f}M {str(dtype)[6:]} params) | binary map ms | decimal map ms | torch ms |\n|---|---:|---:|---:|")
    for name, (cls, kw, ref) in families.items():
        makers = {code: (lambda ps, code=code: cls(ps, state_code=code, **kw)) for code in ("binary", "dynamic")}
        if ref is not None:
            makers["torch"] = ref
        ms = _time(makers, lambda gen: _tensor(n, gen, dtype), steps)
        rows.append({"optimizer": name, **{k + "_ms": v for k, v in ms.items()}})
        torch_ms = f"{ms['torch']:.1f}" if "torch" in ms else "-"
        print(f"| {name} | {ms['binary']:.1f} | {ms['dynamic']:.1f} | {torch_ms} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.optim_step --others", "params": n,
                               "dtype": str(dtype)[6:], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
