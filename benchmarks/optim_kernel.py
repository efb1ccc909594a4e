"""The optimizer's native kernel alone, several builds of it side by side in one process:
``python -m benchmarks.optim_kernel [BUILD ...] [--n 20e6] [--rounds 15] [--opt AdamW8bit] [--dtype float32]
[--json out.json]``.

Each BUILD is a directory of C sources like ``src/eightbit/kernels/cpu/csrc`` (default: that one alone), compiled
with the flags the package uses (``EIGHTBIT_NATIVE_ISA`` narrows them as there). One optimizer step is set up on
``randn(n) * 0.1`` with gradient ``randn(n) * 0.01`` and three warm-up steps; then the step's ``eb_optim_many``
call is repeated with each build in turn, ``rounds`` times (states evolve across calls; every build sees the same
sequence of inputs). Times are per 20M parameters (a small ``n`` such as 4e5 keeps the data in cache and repeats
the call to make up 20M). This is how the kernel changes in BENCHMARKS.md were compared: the noise of this VM's
memory is shared by the builds measured together. Prints a table and writes JSON (default
``benchmarks/results/optim_kernel.json``).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parents[1] / "src" / "eightbit" / "kernels" / "cpu" / "csrc"


def _build(src: Path, out: Path) -> ctypes.CDLL:
    from eightbit.kernels.cpu import native

    cc = native._compiler()
    if cc is None:
        raise SystemExit("no C compiler found (set CC)")
    sources = sorted(str(p) for p in src.glob("*.c"))
    if not sources:
        raise SystemExit(f"{src}: no C sources")
    subprocess.run([cc, *native._flags(), "-fopenmp", *sources, "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    for name, (argtypes, restype) in native._SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def main(argv: list[str] | None = None) -> None:
    """Run the comparison for ``argv`` (see the module docstring); prints the table and writes the JSON."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_kernel", description=__doc__)
    ap.add_argument("builds", nargs="*", type=Path, default=[CSRC], help="directories of C sources")
    ap.add_argument("--n", type=float, default=20e6, help="parameters (default 20e6)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--opt", default="AdamW8bit", help="an eightbit.optim class taking (params, lr)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "optim_kernel.json")
    args = ap.parse_args(argv)
    import eightbit.optim
    from eightbit.kernels.cpu import native

    if native.library() is None:
        raise SystemExit("the native library is not available here")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        libs = [_build(b, Path(tmp) / f"build{i}.so") for i, b in enumerate(args.builds)]
        n, dtype = int(args.n), getattr(torch, args.dtype)
        gen = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter((torch.randn(n, generator=gen) * 0.1).to(dtype))
        p.grad = (torch.randn(n, generator=gen) * 0.01).to(dtype)
        opt = getattr(eightbit.optim, args.opt)([p], lr=1e-3)
        for _ in range(3):
            opt.step()
        reps = max(1, round(20e6 / n))
        times: list[list[float]] = [[] for _ in libs]

        class _Timed:  # the package's library, whose eb_optim_many runs every build in turn
            def __getattr__(self, name: str):
                if name != "eb_optim_many":
                    return getattr(libs[0], name)

                def run(*a):
                    for _ in range(args.rounds):
                        for i, lib in enumerate(libs):
                            t = time.perf_counter()
                            for _ in range(reps):
                                lib.eb_optim_many(*a)
                            times[i].append((time.perf_counter() - t) / reps * 1e3 * 20e6 / n)
                    return libs[0].eb_optim_many(*a)

                return run

        saved = native.library
        native.library = lambda: _Timed()
        try:
            opt.step()
        finally:
            native.library = saved
    if not any(times):
        raise SystemExit(f"{args.opt} on {args.dtype} did not reach eb_optim_many (another kernel path)")
    rows = [{"build": str(b), "median_ms_per_20M": statistics.median(t), "p10_ms": sorted(t)[len(t) // 10],
             "min_ms": min(t)} for b, t in zip(args.builds, times)]
    print(f"| build ({args.opt}, {n / 1e6:.1f}M {args.dtype}, {torch.get_num_threads()} threads) "
          "| median ms / 20M | p10 | min |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['build']} | {r['median_ms_per_20M']:.2f} | {r['p10_ms']:.2f} | {r['min_ms']:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.optim_kernel " + " ".join(argv if argv is not None else sys.argv[1:])
    args.json.write_text(json.dumps({"command": command.strip(), "n": n, "opt": args.opt, "dtype": args.dtype,
                                     "rounds": args.rounds, "threads": torch.get_num_threads(), "rows": rows},
                                    indent=2))


if __name__ == "__main__":
    main()
