"""``python -m benchmarks [--quick] [--cases linear,optim,...] [--json out.json] [--format markdown|rich]``;
``--device cuda`` runs the GPU benchmark (benchmarks/gpu.py) instead."""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import CASES, SCHEMA_VERSION

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (about a minute)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"result file (default {DEFAULT_JSON})")
    p.add_argument("--format", choices=("markdown", "rich"), default="markdown", help="stdout table style")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the GPU benchmark (benchmarks/gpu.py) instead of the CPU cases")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before importing torch: a bad option fails fast
    if args.device == "cuda":
        from .gpu import main as gpu_main

        return gpu_main(args.quick, args.json if args.json != DEFAULT_JSON else None)
    import torch

    from .common import Context, Row, describe_exception, log
    from .machine import machine_info, measure_bandwidth, measure_core_ceilings, measure_fp32_gflops
    from .report import render
    from .targets import evaluate

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # peers' deprecation chatter would bury the tables
    started = time.perf_counter()
    started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ctx = Context(quick=args.quick)
    info = machine_info()
    log("measuring floors (copy bandwidth, fp32 GEMM, one core's int8 and gather rates)")
    ctx.bandwidth_gbps = measure_bandwidth(args.quick)
    ctx.fp32_gflops = measure_fp32_gflops(args.quick)
    ceilings = measure_core_ceilings(args.quick)
    ctx.int8_exact_gmacs = ceilings["int8_exact_gmacs"]
    rows: list[Row] = []

    def result(complete: bool) -> dict:
        try:
            info["loadavg_end"] = list(os.getloadavg())
        except OSError:
            info["loadavg_end"] = None
        return {
            "schema_version": SCHEMA_VERSION,
            "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
            "quick": args.quick,
            "cases": args.cases,
            "complete": complete,
            "started_utc": started_utc,
            "duration_s": time.perf_counter() - started,
            "machine": info,
            "floors": {"bandwidth_gbps": ctx.bandwidth_gbps, "fp32_gflops": ctx.fp32_gflops, **ceilings},
            "rows": [r.to_dict() for r in rows],
            "targets": evaluate(rows),
        }

    args.json.parent.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        try:
            rows += importlib.import_module(f".case_{name}", __package__).run(ctx)
        except Exception as e:  # noqa: BLE001 - one broken case must not lose the others
            log(f"case {name} failed: {describe_exception(e)}")
            rows.append(Row(name, "-", "-", "error", reason=describe_exception(e)))
        # a partial file after each case, so an interrupted long run still leaves its numbers
        args.json.write_text(json.dumps(result(False), indent=1, default=str))
    final = result(True)
    args.json.write_text(json.dumps(final, indent=1, default=str))
    text = render(final)
    if args.format == "rich":
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    else:
        print(text)
    log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
