"""What machine the numbers come from, and its physical floors (memory bandwidth, fp32 GEMM peak, and the
int8 multiply-accumulate and gather rates of one core, from ``csrc/probes.c``)."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from eightbit.env import cpuinfo, package_version

_FLAG_NAMES = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "f16c": "f16c",
    "fma": "fma",
}
_PACKAGES = ("eightbit", "torch", "numpy", "onnxruntime", "onnx", "torchao", "bitsandbytes")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, SIMD/AMX flags, torch build facts, peer versions and the current load."""
    model, flags = cpuinfo()
    flags = flags or set()  # off Linux: no flags rather than guessed ones
    info: dict[str, Any] = {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "flags": {name: (flag in flags) for name, flag in _FLAG_NAMES.items()},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {pkg: package_version(pkg) for pkg in _PACKAGES},
    }
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        info["loadavg_start"] = None
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        info["mem_total_gib"] = None
    return info


def _best_of(fn, n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(quick: bool) -> float:
    """Copy bandwidth in GB/s, counting bytes read plus bytes written (the best of a few big copies).

    The buffers (64/256 MiB) are far larger than the caches, so this is DRAM bandwidth."""
    n = (16 if quick else 64) * 2**20  # fp32 elements
    src = torch.rand(n)
    dst = torch.empty_like(src)
    t = _best_of(lambda: dst.copy_(src), 3 if quick else 7)
    return 2 * src.numel() * 4 / t / 1e9


def measure_fp32_gflops(quick: bool) -> float:
    """Peak-ish fp32 GEMM rate in GFLOP/s (square matmul, best of a few runs)."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t = _best_of(lambda: torch.mm(a, b, out=out), 3 if quick else 5)
    return 2 * n**3 / t / 1e9


def measure_core_ceilings(quick: bool) -> dict[str, float | None]:
    """One core's int8 multiply-accumulate rate (G products/s) with eightbit's exact AVX2 step and with the
    saturating u8s8 step of MLAS/ONNX Runtime (the same 4x16 register tile in assembly, data in L1), and its
    8-lane gather rate from a 256-entry table (G lanes/s) and float32 division rate (G lanes/s, 8-lane vdivps).
    None values where the probe cannot be built."""
    from eightbit.kernels.cpu.native import _compiler

    cc = _compiler()
    empty = {"int8_exact_gmacs": None, "int8_saturating_gmacs": None, "gather_glanes": None, "divide_glanes": None}
    if cc is None:
        return empty
    src = Path(__file__).with_name("csrc") / "probes.c"
    with tempfile.TemporaryDirectory() as d:
        lib_path = Path(d) / "probes.so"
        res = subprocess.run([cc, "-O2", "-march=native", "-shared", "-fPIC", str(src), "-o", str(lib_path)],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return empty
        lib = ctypes.CDLL(str(lib_path))
    lib.eb_probe_int8_tile.argtypes, lib.eb_probe_int8_tile.restype = [ctypes.c_int, ctypes.c_int64], ctypes.c_double
    lib.eb_probe_gather.argtypes, lib.eb_probe_gather.restype = [ctypes.c_int64], ctypes.c_double
    lib.eb_probe_divide.argtypes, lib.eb_probe_divide.restype = [ctypes.c_int64], ctypes.c_double
    reps = 30_000 if quick else 300_000
    best = lambda f: max(f() for _ in range(3)) or None  # noqa: E731 - best of 3: the VM is noisy
    return {
        "int8_exact_gmacs": best(lambda: lib.eb_probe_int8_tile(1, reps)),
        "int8_saturating_gmacs": best(lambda: lib.eb_probe_int8_tile(0, reps)),
        "gather_glanes": best(lambda: lib.eb_probe_gather(reps // 15)),
        "divide_glanes": best(lambda: lib.eb_probe_divide(reps * 4)),
    }
