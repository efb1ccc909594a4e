"""Loader of the native CPU kernels in ``csrc/`` (block-wise quantization, the 8-bit optimizer step, the exact
int8 GEMM, fp8 casts): compiled together into one library once per machine with the system C compiler,
cached on disk, loaded with ctypes. The kernels parallelize with OpenMP; built with ``-fopenmp`` they need
``libgomp.so.1``, which resolves to the runtime torch has already loaded, so they share torch's threads and
honour ``torch.set_num_threads`` (a build without OpenMP support gives single-threaded kernels).

``library()`` returns None when ``EIGHTBIT_NATIVE=0``, when no compiler is found, or when the build fails (a
one-line warning says why, once); every op then runs its plain-PyTorch reference.

The build cache (``$EIGHTBIT_CACHE_DIR`` or ``~/.cache/eightbit``), made so that it cannot crash a process:

* The file name is a hash of everything the binary depends on: the sources and headers, the flags, the
  compiler's version, torch's version and the CPU's feature flags (``-march=native`` targets them, so a cache
  shared between machines never hands one machine another's instructions).
* Beside each library a ``.sha256`` file holds its digest; a library is loaded only when its bytes match
  (a truncated or corrupted ``.so`` would otherwise be mapped and kill the process with SIGBUS on first use).
  A mismatch deletes it and rebuilds.
* Builds write to a temporary file in the cache directory and are renamed into place atomically (the digest
  first, then the library), so concurrent processes never load a half-written library; temporaries left by a
  killed build (older than an hour) are removed.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..._memory import empty  # noqa: F401  (re-exported: the kernels' output buffers)

__all__ = ["available", "empty", "library", "ptr", "rowwise", "ROW_UNIT", "build_key", "build_cached", "cache_dir",
           "MAX_BLOCK", "unavailable_reason"]

MAX_BLOCK = 4096  # the C kernels' per-block scratch (csrc/blocks.h): larger blocks run the references

_CSRC = Path(__file__).with_name("csrc")
# No fast-math: results must match the PyTorch references bit for bit (-fno-trapping-math only drops
# FP-exception semantics, which lets the compiler vectorize branch-free selects).
_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=256", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
          "-fno-strict-aliasing", "-fPIC", "-shared", "-std=c11"]
# EIGHTBIT_NATIVE_ISA narrows -march=native, so that a machine with AVX-512 can build and test the kernels other
# machines run: "avx2" (no AVX-512: the AVX2 code paths), "generic" (no AVX at all: the plain C paths).
_ISA_FLAGS = {"native": [], "avx2": ["-mno-avx512f"], "generic": ["-mno-avx"]}
_STALE_SECONDS = 3600  # a build temporary older than this belongs to a killed build

_i64, _i32, _vp = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
_SIGNATURES = {
    "eb_quantize_blocks": ([_vp, _i64, _i64, _vp, _i64, _i64, _vp, _vp], None),
    "eb_dequantize_blocks": ([_vp, _vp, _vp, _i64, _i64, _vp], None),
    "eb_optim_norm": ([_i32, _i32, _i32, _i64, _i32, _i64, _vp, _vp], None),
    "eb_optim_f32_many": ([_i32, _i32, _i32, _i32, _i64, _vp, _vp], None),
    "eb_optim_f32_fields": ([], _i64),
    "eb_optim_many": ([_i32, _i32, _i32, _i64, _i32, _i64, _vp, _vp], _i64),
    "eb_optim_desc_fields": ([], _i64),
    "eb_hyper_size": ([], _i64),
    "eb_amx_usable": ([], _i64),
    "eb_lut_size": ([], _i64),
    "eb_int8_gemm": ([_vp, _vp, _vp, _vp, _vp, _i64, _i64, _i64], None),
    "eb_int8_prepare": ([_vp, _i64, _i64, ctypes.c_float, _vp, _vp, _vp], ctypes.c_int),
    "eb_int8_linear": ([_vp, _i64, _i64, _vp, _vp, _vp, _i64, ctypes.c_float, _i64, _vp, _vp, _vp, _vp, _vp, _vp,
                        _vp, _vp, _vp], _i64),
    "eb_int8_linear_scratch": ([_i64, _i64, _i64, _i64, _vp], _i64),
    "eb_int8_linear_finish": ([_vp, _i64, _i64, _vp, _vp, _vp, _vp, _vp, _vp, _i64, _vp], None),
    "eb_fp32_to_fp8": ([_vp, _vp, _i64, _i64, _i64, ctypes.c_float, _i32, _i32, _i32, _i32, _i32, _i32, _i32, _vp],
                       None),
    "eb_fp8_to_fp32": ([_vp, _vp, _vp, _i64, _i64, _i64, _vp], None),
    "eb_absmax_bits": ([_vp, _i64], ctypes.c_uint32),
    "eb_fp8_gemm_supported": ([], ctypes.c_int),
    "eb_code_paths": ([], ctypes.c_int),
    "eb_finite_minmax": ([_vp, _i64, _i64, _i32, _vp, _vp], None),
    "eb_quantize_int8": ([_vp, _vp, _vp, _i64, _i64, _i64, _i32, _vp], None),
    "eb_fp8_linear": ([_vp, _vp, _vp, _vp, _i64, _vp, _i64, _vp, _vp, _i64, _i64, _i64], ctypes.c_int),
}


def cache_dir() -> Path:
    """Directory of the cached native libraries."""
    base = os.environ.get("EIGHTBIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "eightbit"
    )
    return Path(base)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_features() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("flags", "model name", "Features")]
    return "\n".join(sorted(set(keep)))


def _flags() -> list[str]:
    """The compiler flags: _FLAGS narrowed by EIGHTBIT_NATIVE_ISA (ValueError for a value not in _ISA_FLAGS)."""
    isa = os.environ.get("EIGHTBIT_NATIVE_ISA", "native")
    if isa not in _ISA_FLAGS:
        raise ValueError(f"EIGHTBIT_NATIVE_ISA must be one of {sorted(_ISA_FLAGS)}, got {isa!r}")
    return _FLAGS + _ISA_FLAGS[isa]


def build_key(cc: str) -> str:
    """Hash of everything the library depends on: sources, flags, compiler version, torch version, CPU."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    for p in sorted(_CSRC.glob("*.[ch]")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    for part in (" ".join(_flags()), version, torch.__version__, _cpu_features()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:20]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(target: Path) -> bool:
    """Whether ``target`` exists and matches the digest written beside it when it was built."""
    side = target.with_suffix(".sha256")
    try:
        return target.is_file() and side.read_text().strip() == _digest(target)
    except OSError:
        return False


def _clean_stale(directory: Path) -> None:
    now = time.time()
    for tmp in directory.glob("tmp*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def _compile(cc: str, out: str) -> None:
    sources = [str(p) for p in sorted(_CSRC.glob("*.c"))]
    err = ""
    for extra in (["-fopenmp"], []):  # without OpenMP support the pragmas are ignored (one thread)
        res = subprocess.run([cc, *_flags(), *extra, *sources, "-o", out, "-lm"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode == 0:
            return
        err = res.stderr.strip()
    lines = [ln for ln in err.splitlines() if "error" in ln] or err.splitlines() or ["no output"]
    raise RuntimeError(f"{Path(cc).name} failed: {lines[0].strip()[:300]}")


def _build(cc: str) -> Path:
    """Path of a valid cached library for this machine, building it when missing or invalid."""
    return build_cached(f"eightbit_native_{build_key(cc)}.so", lambda out: _compile(cc, out))


def build_cached(name: str, compile: Callable[[str], None]) -> Path:
    """Path of the valid cached library ``name`` (a file name carrying the hash of what it is built from), built
    with ``compile(output_path)`` when missing or invalid: atomically installed with its digest beside it."""
    directory = cache_dir()
    target = directory / name
    if _valid(target):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    _clean_stale(directory)
    for stale in (target, target.with_suffix(".sha256")):  # a truncated or foreign library is never loaded
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
    fd, tmp = tempfile.mkstemp(prefix="tmp", suffix=".so", dir=directory)
    os.close(fd)
    side_tmp = tmp + ".sha256"
    try:
        compile(tmp)
        Path(side_tmp).write_text(_digest(Path(tmp)))
        os.replace(side_tmp, target.with_suffix(".sha256"))
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, side_tmp):
            if os.path.exists(leftover):
                os.unlink(leftover)
    if not _valid(target):  # another process replaced it meanwhile with a different build: never load that
        raise RuntimeError(f"cached library {target} changed while it was being installed")
    return target


_WHY_NOT: list[str] = []  # the reason library() returned None (one entry once it has)


def unavailable_reason() -> str | None:
    """Why the native library is not loaded (None when it is): what ``library()``'s warning said."""
    return None if library() is not None else (_WHY_NOT[0] if _WHY_NOT else "not loaded")


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded native library, or None (``EIGHTBIT_NATIVE=0``, no compiler, or a failed build)."""
    if os.environ.get("EIGHTBIT_NATIVE", "1") == "0":
        _WHY_NOT.append("disabled by EIGHTBIT_NATIVE=0")
        return None
    cc = _compiler()
    if cc is None:
        _WHY_NOT.append("no C compiler found (set CC or install cc/gcc/clang)")
        warnings.warn("eightbit: no C compiler found (set CC or install cc/gcc/clang); native CPU kernels "
                      "disabled, the PyTorch references run instead", RuntimeWarning, stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
    except Exception as e:  # any build/load problem: the references run, say why once
        reason = " ".join(str(e).split())[:400]
        _WHY_NOT.append(f"{type(e).__name__}: {reason}")
        warnings.warn(f"eightbit: native CPU kernels unavailable ({type(e).__name__}: {reason}); the PyTorch "
                      "references run instead", RuntimeWarning, stacklevel=2)
        return None
    return lib


def available() -> bool:
    """Whether the native library is loaded (the registration probe of every native kernel)."""
    return library() is not None


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a tensor's first element (None for None)."""
    return None if t is None else t.data_ptr()


# ---------------------------------------------------------------- row-wise element casts
ROW_UNIT = 1 << 16  # elements per row when one parameter covers a whole tensor (rows are what kernels parallelize)


def rowwise(x: torch.Tensor, params: Sequence[torch.Tensor], call: Callable,
            out_dtype: torch.dtype) -> torch.Tensor | None:
    """Run a native row-wise cast ``call(lib, x_ptr, param_ptrs, param_stride, rows, cols, out_ptr)`` over a
    contiguous ``x`` whose per-row parameters (``params``: scales, zero points, all of one layout) are one value
    each or one per leading index (shaped to broadcast against ``x``); None when that does not fit. Float
    parameters are passed as float32, integer ones as int32."""
    lib = library()
    if lib is None or x.dim() == 0 or not params:
        return None
    params = [t.to(torch.float32 if t.is_floating_point() else torch.int32) for t in params]
    n = x.numel()
    out = empty(x.shape, dtype=out_dtype)
    xi, oi = x.element_size(), out.element_size()
    if all(t.numel() == 1 for t in params):  # one value each: rows of ROW_UNIT, so the kernel can parallelize
        ps = [t.reshape(1).contiguous() for t in params]
        pp = [ptr(t) for t in ps]
        body = n // ROW_UNIT
        if body:
            call(lib, ptr(x), pp, 0, body, ROW_UNIT, ptr(out))
        if n % ROW_UNIT:
            call(lib, ptr(x) + body * ROW_UNIT * xi, pp, 0, 1, n % ROW_UNIT, ptr(out) + body * ROW_UNIT * oi)
        return out
    rows = x.shape[0]
    if any(t.shape[:1] != (rows,) or t.numel() != rows or t.dim() != x.dim() for t in params):
        return None
    ps = [t.reshape(rows).contiguous() for t in params]
    call(lib, ptr(x), [ptr(t) for t in ps], 1, rows, n // max(rows, 1), ptr(out))
    return out
