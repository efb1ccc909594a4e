"""``python -m benchmarks --device cuda [--quick] [--json out.json]``: eightbit's CUDA kernels beside torch on
one GPU, in one process, in well under 7 minutes (issue 15's benchmark).

Cases (every time a median of CUDA-event timings after a warm-up; sizes as in the issue):
* linear: ``Linear8bitLt`` (Triton GEMM, and with ``EIGHTBIT_CUDA_GEMM=int_mm``) vs bf16 ``nn.Linear`` and raw
  ``torch._int_mm``, M = 1, 16, 17, 128, 2048 on 4096x4096 and 4096x14336, without and with 0.1 % outlier
  columns; the relative error of each against the float64 product.
* optim: ``AdamW8bit`` vs ``torch.optim.AdamW(fused=True)`` on 100M float32 parameters.
* roundtrip: block-wise quantize + dequantize and FP8 (E4M3) quantize + dequantize of 64M float32 values in
  GB/s against the device's measured copy bandwidth.
* fp8: ``LinearFP8`` (dynamic activations) vs bf16 ``nn.Linear``.
Targets (printed with each table): Linear8bitLt <= 1.0x bf16 at every M, AdamW8bit <= 1.0x fused AdamW,
round trips >= 70 % of copy bandwidth.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "gpu_latest.json"


class Sizes:
    """Problem sizes: the issue's (``full``), fewer (``quick``), or tiny ones for the CPU smoke test."""

    def __init__(self, mode: str):
        self.mode = mode
        self.shapes = {"full": [(4096, 4096), (4096, 14336)], "quick": [(4096, 4096)], "smoke": [(64, 96)]}[mode]
        self.ms = {"full": [1, 16, 17, 128, 2048], "quick": [1, 16, 17, 128], "smoke": [1, 17]}[mode]
        self.optim_params = {"full": 100_000_000, "quick": 25_000_000, "smoke": 20_000}[mode]
        self.optim_tensor = {"full": 4_000_000, "quick": 4_000_000, "smoke": 5_000}[mode]
        self.roundtrip = {"full": 1 << 26, "quick": 1 << 24, "smoke": 1 << 12}[mode]
        self.copy = {"full": 1 << 28, "quick": 1 << 26, "smoke": 1 << 12}[mode]
        self.fp8_ms = {"full": [1, 128, 2048], "quick": [1, 128], "smoke": [1, 5]}[mode]
        self.fp8_shape = (64, 96) if mode == "smoke" else (4096, 4096)
        self.iters = 2 if mode == "smoke" else 20


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str, *, warmup: int = 3, iters: int = 20, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean ms per call of ``iters`` back-to-back calls (CUDA events on a GPU,
    the wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(samples)


def copy_bandwidth(sz: Sizes, device: str) -> float:
    """GB/s of a device-to-device copy (bytes read + written)."""
    src = torch.empty(sz.copy, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = _time(lambda: dst.copy_(src), device, iters=min(10, sz.iters))
    return 2 * sz.copy / ms / 1e6


def _rel(ref: torch.Tensor, y: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def linear_case(sz: Sizes, device: str) -> list[dict]:
    from eightbit.nn import Linear8bitLt

    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    it = sz.iters
    for k, n in sz.shapes:
        lin = nn.Linear(k, n, device=device)
        q = Linear8bitLt.from_linear(lin, threshold=6.0).to(device)
        lin = lin.bfloat16()
        w64 = lin.weight.double()
        for outliers in (0.0, 0.001):
            for m in sz.ms:
                x = torch.randn(m, k, device=device, generator=gen).bfloat16()
                if outliers:
                    cols = torch.randperm(k, device=device, generator=gen)[: max(1, int(k * outliers))]
                    x[:, cols] *= 20
                ref = x.double() @ w64.T + lin.bias.double()
                row = {"case": "linear", "shape": f"{k}x{n}", "m": m, "outlier_frac": outliers}
                with torch.no_grad():
                    row["bf16_ms"] = _time(lambda: lin(x), device, iters=it)
                    row["bf16_rel_error"] = _rel(ref, lin(x))
                    os.environ["EIGHTBIT_CUDA_GEMM"] = "triton"
                    row["int8_triton_ms"] = _time(lambda: q(x), device, iters=it)
                    row["int8_triton_rel_error"] = _rel(ref, q(x))
                    if m > 16 and device == "cuda":
                        os.environ["EIGHTBIT_CUDA_GEMM"] = "int_mm"
                        row["int8_int_mm_ms"] = _time(lambda: q(x), device, iters=it)
                        row["int8_int_mm_rel_error"] = _rel(ref, q(x))
                        a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
                        b8t = q.weight_int8.t()
                        row["raw_int_mm_ms"] = _time(lambda: torch._int_mm(a8, b8t), device, iters=it)
                    os.environ["EIGHTBIT_CUDA_GEMM"] = "triton"
                row["x_bf16"] = row["int8_triton_ms"] / row["bf16_ms"]
                row["target_met"] = row["x_bf16"] <= 1.0
                rows.append(row)
                print(f"linear {k}x{n} M={m} outliers={outliers}: bf16 {row['bf16_ms']:.4f} ms, "
                      f"int8 {row['int8_triton_ms']:.4f} ms ({row['x_bf16']:.2f}x)", flush=True)
        del lin, q
    return rows


def optim_case(sz: Sizes, device: str) -> list[dict]:
    import eightbit.optim as O

    total = sz.optim_params
    sizes = [sz.optim_tensor] * (total // sz.optim_tensor)
    rows = []
    for name, make in (("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
                       ("eightbit AdamW8bit", lambda ps: O.AdamW8bit(ps, lr=1e-3))):
        params = [nn.Parameter(torch.randn(s, device=device)) for s in sizes]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = make(params)
        ms = _time(opt.step, device, warmup=2, iters=min(5, sz.iters), repeats=5)
        state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                    if isinstance(t, torch.Tensor))
        rows.append({"case": "optim", "impl": name, "params": total, "ms": ms, "state_bytes": state})
        print(f"optim {name}: {ms:.3f} ms, state {state / 2**20:.0f} MiB", flush=True)
        del params, opt
    rows[1]["x_fused"] = rows[1]["ms"] / rows[0]["ms"]
    rows[1]["target_met"] = rows[1]["x_fused"] <= 1.0
    return rows


def roundtrip_case(sz: Sizes, device: str, copy_gbps: float) -> list[dict]:
    import eightbit.functional as F

    n = sz.roundtrip
    x = torch.randn(n, device=device)
    rows = []
    q, state = F.quantize_blockwise(x)
    bytes_q = 4 * n + n + 4 * state.absmax.numel()  # read fp32, write codes and scales
    bytes_d = n + 4 * state.absmax.numel() + 4 * n
    q8, s8 = F.quantize_fp8(x, "e4m3")
    for name, fn, nbytes in (
        ("quantize_blockwise", lambda: F.quantize_blockwise(x), bytes_q),
        ("dequantize_blockwise", lambda: F.dequantize_blockwise(q, state), bytes_d),
        ("quantize_fp8 e4m3", lambda: F.quantize_fp8(x, "e4m3"), 5 * n),
        ("dequantize_fp8 e4m3", lambda: F.dequantize_fp8(q8, s8, "e4m3"), 5 * n),
    ):
        ms = _time(fn, device, iters=sz.iters)
        gbps = nbytes / ms / 1e6
        rows.append({"case": "roundtrip", "impl": name, "elements": n, "ms": ms, "gbps": gbps,
                     "of_copy": gbps / copy_gbps, "target_met": gbps / copy_gbps >= 0.7})
        print(f"roundtrip {name}: {ms:.3f} ms, {gbps:.0f} GB/s ({100 * gbps / copy_gbps:.0f} % of copy)", flush=True)
    return rows


def fp8_case(sz: Sizes, device: str) -> list[dict]:
    from eightbit.nn import LinearFP8

    rows = []
    k, n = sz.fp8_shape
    lin = nn.Linear(k, n, device=device)
    q = LinearFP8.from_linear(lin, activation="dynamic").to(device)
    lb = nn.Linear(k, n, device=device).bfloat16()
    lb.load_state_dict({k_: v.bfloat16() for k_, v in lin.state_dict().items()})
    for m in sz.fp8_ms:
        x = torch.randn(m, k, device=device)
        with torch.no_grad():
            t_bf16 = _time(lambda: lb(x.bfloat16()), device, iters=sz.iters)
            t_fp8 = _time(lambda: q(x), device, iters=sz.iters)
        rows.append({"case": "fp8", "m": m, "bf16_ms": t_bf16, "fp8_ms": t_fp8, "x_bf16": t_fp8 / t_bf16})
        print(f"fp8 M={m}: bf16 {t_bf16:.4f} ms, LinearFP8 {t_fp8:.4f} ms", flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def run_cases(sz: Sizes, device: str) -> tuple[dict, dict[str, list[dict]]]:
    """(machine info, rows per case) of every case at sizes ``sz`` on ``device`` ("cuda"; "cpu" for the smoke
    test of this script)."""
    from eightbit.kernels import registered_kernels

    info = {"device": device, "torch": torch.__version__,
            "kernels": [op for op, dev in registered_kernels() if dev == device]}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    copy_gbps = copy_bandwidth(sz, device)
    info["copy_gbps"] = copy_gbps
    print(f"{info}", flush=True)
    results: dict[str, list[dict]] = {}
    for name, fn in (("linear", lambda: linear_case(sz, device)), ("optim", lambda: optim_case(sz, device)),
                     ("roundtrip", lambda: roundtrip_case(sz, device, copy_gbps)),
                     ("fp8", lambda: fp8_case(sz, device))):
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - one broken case must not lose the others
            results[name] = [{"case": name, "error": f"{type(e).__name__}: {e}"}]
            print(f"case {name} failed: {type(e).__name__}: {e}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    return info, results


def main(quick: bool = False, json_path: Path | None = None) -> int:
    """Run every case on the GPU, print one table per case, write the JSON; 1 if no CUDA device is present."""
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark needs one (python -m benchmarks runs the CPU cases)")
        return 1
    started = time.perf_counter()
    info, results = run_cases(Sizes("quick" if quick else "full"), "cuda")
    out = {"command": "python -m benchmarks --device cuda" + (" --quick" if quick else ""),
           "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "duration_s": time.perf_counter() - started, "machine": info, "results": results}
    path = json_path or DEFAULT_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    for name, rows in results.items():
        print(f"\n### {name}\n\n{_table(rows)}")
    print(f"\nresults written to {path} ({out['duration_s']:.0f} s)")
    return 0
