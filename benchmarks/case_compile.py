"""Case "compile": first-call latency of eightbit's compiled (torch.compile/inductor) kernels in a fresh
process, then in a second fresh process that reuses the on-disk cache the first one filled.

Full run: both processes share a new, empty TORCHINDUCTOR_CACHE_DIR, so the first pays the whole compile.
Quick run: the fp8 op only, with the default cache directory (whatever earlier runs left there), so that
it fits in the smoke test's time; the rows say which cache was used.
Each row's median is the first call's latency (one sample per process); ``extra`` holds the second call
(steady state), import times and the process's wall time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Context, Row, log

ROOT = Path(__file__).resolve().parents[1]
OPS = ("fp8", "blockwise", "optim", "linear")


def _probe(ops: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[dict | None, str, float]:
    """Run the probe child; (parsed JSON or None, failure reason, wall seconds)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._compile_probe", ",".join(ops)],
            cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {tail[:160]}", wall
    return json.loads(lines[-1]), "", wall


def run(ctx: Context) -> list[Row]:
    """Two fresh processes, as result rows (config = op, impl = which process)."""
    ops = ("fp8",) if ctx.quick else OPS
    timeout = 40.0 if ctx.quick else 400.0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    tmp = None
    if ctx.quick:
        cache = "default inductor cache"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="eightbit-inductor-")
        env["TORCHINDUCTOR_CACHE_DIR"] = tmp.name
        cache = "fresh empty inductor cache"
    rows: list[Row] = []
    try:
        for label in ("1st process", "2nd process (cache reuse)"):
            log(f"[compile] {label}, {cache}")
            result, reason, wall = _probe(ops, env, timeout)
            for op in ops:
                config = f"{op} first call"
                if result is None:
                    rows.append(Row("compile", config, label, "error", reason=reason))
                    continue
                r = result["ops"].get(op, {"status": "error", "reason": "missing from probe output"})
                if r["status"] != "ok":
                    rows.append(Row("compile", config, label, r["status"], reason=r.get("reason", "")))
                    continue
                first_ms = r["first_s"] * 1e3
                rows.append(Row(
                    "compile", config, label, "ok", median_ms=first_ms, p10_ms=first_ms, p90_ms=first_ms,
                    samples=1, calls_per_sample=1,
                    extra={
                        "second_call_ms": r["second_s"] * 1e3,
                        "torch_import_s": result.get("torch_import_s"),
                        "eightbit_import_s": result.get("eightbit_import_s"),
                        "process_wall_s": wall,
                        "cache": cache,
                    },
                ))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows
