"""What eightbit runs on here, for a bug report or a "why is this slow" question: versions, the CPU features the
native kernels compile for, whether the native C library and the C++ op kernels loaded (and why not), CUDA and
Triton, and which device kernels serve each op (an op without one runs its plain-PyTorch reference).
``eightbit env`` prints it (``--json`` for the dict); ``python -m eightbit env`` does the same.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

import torch

__all__ = ["collect_env", "cpuinfo", "package_version", "CPU_FEATURES", "NATIVE_PATHS"]

# /proc/cpuinfo flags that choose the native kernels' code paths (csrc/): AVX2 + FMA + F16C (the baseline vector
# paths), AVX-512 F/BW/CD (16-lane passes), VBMI (folded decode tables of the optimizer), VNNI (int8 GEMM tiles),
# BF16 (the FP8 GEMM's dot products), AMX tile/INT8/BF16 (the int8 and FP8 GEMMs' tiles)
CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512vbmi", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# the native library's code paths, in the bit order of eb_code_paths (csrc/paths.c)
NATIVE_PATHS = ("avx2 8-lane", "avx512 16-lane optimizer", "avx512vbmi folded decode", "avx512vnni int8 GEMM",
                "avx512bf16 FP8 GEMM", "amx int8 GEMM", "amx-bf16 FP8 GEMM")
_PACKAGES = ("torch", "transformers", "safetensors", "peft", "accelerate", "triton", "numpy")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpuinfo() -> tuple[str, set[str] | None]:
    """(the CPU's model name, its ``/proc/cpuinfo`` feature flags); flags None off Linux (unknown, not guessed)."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _cpu() -> dict[str, Any]:
    model, flags = cpuinfo()
    return {"model": model, "machine": platform.machine(), "threads": torch.get_num_threads(),
            "features": None if flags is None else {f: f in flags for f in CPU_FEATURES}}


def _cuda() -> dict[str, Any]:
    out: dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                           "triton": importlib.util.find_spec("triton") is not None, "devices": []}
    if out["available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                   "memory_gib": round(p.total_memory / 2**30, 1)})
    return out


def collect_env() -> dict[str, Any]:
    """The report as a JSON-serializable dict: ``eightbit`` (version, path), ``python``, ``platform``, ``packages``
    (name -> version or None), ``cpu`` (model, machine, threads, ``features``: flag -> bool, None off Linux),
    ``native`` and ``cpp_ops`` (``loaded``, ``detail``: the library's path or why it is not loaded; ``native``
    also ``paths``: the instruction-set code paths the library was built with, names from ``NATIVE_PATHS``;
    none = plain C; and ``amx``: whether the AMX paths run here, the tile state granted by the OS and
    ``EIGHTBIT_AMX`` not 0), ``settings``
    (the ``EIGHTBIT_*`` environment variables set), ``reference_forced``, ``cuda`` (available, torch's CUDA
    version, triton, devices) and ``kernels`` (op -> the device types a kernel serves; [] = reference only).
    Loads the kernels as ``import eightbit`` does; never raises for a missing optional part."""
    import eightbit

    from .functional import ops
    from .kernels import forced_reference, registered_kernels
    from .kernels.cpu import native, torch_ext

    lib = native.library()
    cpp = torch_ext.int8_linear_loaded()
    served: dict[str, list[str]] = {op: [] for op in sorted(ops.SCHEMAS)}
    for op, device in registered_kernels():
        served.setdefault(op, []).append(device)
    return {
        "eightbit": {"version": eightbit.__version__, "path": os.path.dirname(eightbit.__file__)},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: package_version(p) for p in _PACKAGES},
        "cpu": _cpu(),
        "native": {"loaded": lib is not None,
                   "detail": getattr(lib, "_name", None) if lib is not None else native.unavailable_reason(),
                   "paths": [] if lib is None else [p for i, p in enumerate(NATIVE_PATHS) if lib.eb_code_paths() >> i & 1],
                   "amx": lib is not None and bool(lib.eb_amx_usable()),
                   "isa": os.environ.get("EIGHTBIT_NATIVE_ISA", "native"), "cache_dir": str(native.cache_dir())},
        "cpp_ops": {"loaded": cpp, "detail": "eightbit::int8_linear served from C++" if cpp
                    else torch_ext.unavailable_reason()},
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("EIGHTBIT_")},
        "reference_forced": forced_reference(),
        "cuda": _cuda(),
        "kernels": served,
    }
