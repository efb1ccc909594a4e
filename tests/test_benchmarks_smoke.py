"""Smoke test of the benchmark harness: `python -m benchmarks --quick` finishes in bounded time, writes a JSON
file with the documented schema, and every case produces rows (peers or eightbit parts may be unavailable)."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = ["linear", "optim", "blockwise", "fp8", "compile", "models", "load", "decode"]
ROW_KEYS = {"case", "config", "impl", "status", "reason", "median_ms", "p10_ms", "p90_ms", "samples",
            "calls_per_sample", "gbps", "rel_error", "floor_ms", "x_floor", "extra"}


@pytest.mark.slow
def test_quick_run_writes_schema(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| case | config | implementation |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["quick"] is True and data["complete"] is True
    assert data["cases"] == CASES
    m = data["machine"]
    assert m["logical_cores"] >= 1 and m["cpu_model"]
    assert {"avx2", "avx512f", "amx_int8"} <= set(m["flags"])
    assert {"torch", "onnxruntime", "torchao", "bitsandbytes"} <= set(m["versions"])
    assert data["floors"]["bandwidth_gbps"] > 0 and data["floors"]["fp32_gflops"] > 0
    ceilings = {k: data["floors"][k] for k in ("int8_exact_gmacs", "int8_saturating_gmacs", "gather_glanes",
                                                     "divide_glanes")}
    if m["flags"]["avx2"] and (shutil.which("cc") or shutil.which("gcc")):  # the probes build wherever the kernels do
        assert all(v is not None and v > 0 for v in ceilings.values()), ceilings
    for row in data["rows"]:
        assert set(row) == ROW_KEYS
        assert row["status"] in ("ok", "unavailable", "error")
        if row["status"] == "ok":
            assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["samples"] >= 1
        else:
            assert row["reason"]
    for case in CASES:
        assert any(r["case"] == case for r in data["rows"]), f"case {case} produced no rows"
    # the always-present torch baselines must have run, with float64-referenced accuracy
    ok = {(r["case"], r["impl"]): r for r in data["rows"] if r["status"] == "ok"}
    assert ok[("linear", "torch fp32 nn.Linear")]["rel_error"] < 1e-5
    assert ok[("optim", "torch AdamW fused")]["extra"]["state_bytes"] > 0
    assert ok[("fp8", "torch float8_e4m3fn cast")]["gbps"] > 0
    # whole models: fp32 matches its float64 run; LLM.int8() keeps MiniLM's sentence embeddings
    models = {(r["config"].split(",")[0], r["impl"]): r for r in data["rows"] if r["case"] == "models" and r["status"] == "ok"}
    assert models[("MiniLM", "torch fp32")]["rel_error"] < 1e-5
    assert models[("MiniLM", "eightbit LLM.int8() t=6")]["extra"]["cosine_min"] > 0.99
    assert models[("GPT-2 toy", "eightbit LLM.int8() t=6")]["rel_error"] < 0.1
    decode = [r for r in data["rows"] if r["case"] == "decode" and r["impl"] == "eightbit Linear8bitLt"]
    assert {r["config"].split(", ")[1] for r in decode} == {"hot", "cold"} and all(r["status"] == "ok" for r in decode)
    assert all(r["extra"]["ms_per_layer"] > 0 for r in decode)
    assert all(r["floor_ms"] and r["x_floor"] > 0 for r in decode if ", cold," in r["config"])
    assert any(r["impl"].startswith("read-only floor") and r["status"] == "ok" for r in data["rows"])
    loads = {r["impl"]: r for r in data["rows"] if r["case"] == "load" and r["status"] == "ok"}
    assert len(loads) == 3 and all(r["gbps"] > 0 for r in loads.values())
    assert {"target", "measured", "op", "limit", "unit", "pass"} <= set(data["targets"][0])
    assert len(data["targets"]) >= 9


def test_unknown_case_is_rejected():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--cases", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown case" in proc.stderr


def test_gpu_benchmark_cases_run_at_smoke_sizes():
    """The GPU benchmark's cases (benchmarks/gpu.py) at tiny sizes on the CPU: every case produces its rows with
    times and no error, so the prepared GPU run does not fail on the API; without CUDA, --device cuda says so."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu import Sizes, run_cases

    info, results = run_cases(Sizes("smoke"), "cpu")
    assert set(results) == {"linear", "optim", "roundtrip", "fp8"} and info["copy_gbps"] > 0
    for name, rows in results.items():
        assert rows and not any("error" in r for r in rows), (name, rows)
    assert all(r["int8_triton_ms"] > 0 and r["int8_triton_rel_error"] < 0.05 for r in results["linear"])
    assert results["optim"][1]["state_bytes"] < 0.4 * results["optim"][0]["state_bytes"]
    import torch
    if not torch.cuda.is_available():  # (on a GPU machine this would be the full GPU benchmark)
        proc = subprocess.run([sys.executable, "-m", "benchmarks", "--device", "cuda"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and "no CUDA device" in proc.stdout


@pytest.mark.parametrize("mode", [[], ["--others"], ["--minilm"]])
def test_optim_step_modes_write_json(tmp_path, mode):
    """`python -m benchmarks.optim_step` in each mode, tiny: runs, prints its table and writes its JSON."""
    out = tmp_path / "optim_step.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.optim_step", "2e4", "--steps", "1", "--json", str(out),
                           *mode], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = {"--others": "optim_step_others.json", "--minilm": "optim_step_minilm.json"}.get(mode[0] if mode else "")
    data = json.loads((out.with_name(name) if name else out).read_text())
    assert data["command"].startswith("python -m benchmarks.optim_step")
    assert "eightbit" in proc.stdout or "binary" in proc.stdout


def test_optim_kernel_compares_builds_and_writes_json(tmp_path):
    """`python -m benchmarks.optim_kernel`, tiny: builds the kernel from the given source directory (twice here),
    times each build's call in turn, prints one row per build and writes them as JSON."""
    from eightbit.kernels.cpu import native

    if native.library() is None:
        pytest.skip("no native library on this machine")
    out = tmp_path / "optim_kernel.json"
    csrc = str(ROOT / "src" / "eightbit" / "kernels" / "cpu" / "csrc")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.optim_kernel", csrc, csrc, "--n", "2e4", "--rounds", "2",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m benchmarks.optim_kernel") and len(data["rows"]) == 2
    assert all(r["median_ms_per_20M"] > 0 for r in data["rows"]) and proc.stdout.count(csrc) == 2


def test_paired_ratio_cancels_a_drift_between_rounds():
    """Two implementations timed in the same rounds while the machine's speed drifts 2x from round to round: the
    median of per-round ratios is their true 0.9, the ratio of the medians is not; rounds only one side has are
    skipped, and no common round gives None."""
    from benchmarks.common import Row, paired_ratio

    speed = [1.0, 2.0, 1.0, 2.0, 2.0, 1.5, 2.0]
    a = Row("models", "c", "a", "ok", extra={"round_ms": [[r, 90.0 * s] for r, s in enumerate(speed)] + [[9, 1.0]]})
    b = Row("models", "c", "b", "ok", extra={"round_ms": [[r, 100.0 * s] for r, s in enumerate(speed)]})
    assert paired_ratio(a, b) == pytest.approx(0.9)
    medians = statistics.median(t for _, t in a.extra["round_ms"]) / statistics.median(t for _, t in b.extra["round_ms"])
    assert medians != pytest.approx(0.9, rel=0.05)  # what the pairing corrects
    b_shifted = Row("models", "c", "b", "ok", extra={"round_ms": [[r, 100.0 * s] for r, s in enumerate(speed[1:])]})
    assert paired_ratio(a, b_shifted) != pytest.approx(0.9)  # pairing by round, not by position, is what cancels
    assert paired_ratio(a, Row("models", "c", "b", "ok", extra={"round_ms": [[20, 5.0]]})) is None
