"""Loader of the native CPU kernels in ``csrc/*.c`` (block-wise quantization and the 8-bit Adam update,
the exact int8 GEMM, fp8 casts): compiled together into one library once per machine with the system C
compiler (the one torch.compile uses on CPU), cached, loaded with ctypes. The kernels parallelize with
OpenMP; built with ``-fopenmp`` they need ``libgomp.so.1``, which resolves to the runtime torch has already
loaded, so they share torch's threads and honour ``torch.set_num_threads`` (a build without OpenMP support
falls back to single-threaded kernels).

``library()`` returns None when no compiler is found or the build fails (a warning says why, once); every
caller then falls back to the torch.compile'd or plain-PyTorch path. ``EIGHTBIT_NATIVE=0`` disables it.
The cache directory is ``$EIGHTBIT_CACHE_DIR`` or ``~/.cache/eightbit``; the file name carries a hash of the
source, the flags and the compiler, so an edit or another compiler rebuilds.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["empty", "library", "ptr"]

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = sorted(_CSRC.glob("*.c"))
# No fast-math: results must match the PyTorch references bit for bit (-fno-trapping-math only drops
# FP-exception semantics, which lets the compiler vectorize branch-free selects).
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
          "-fno-strict-aliasing", "-fPIC", "-shared", "-std=c11"]

_i64, _i32, _vp = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
_SIGNATURES = {
    "eb_quantize_blocks": [_vp, _i64, _i64, _vp, _vp, _vp, _i32, _i32, _vp, _vp, _i32, _i32, _i64, _i64, _vp, _vp],
    "eb_dequantize_blocks": [_vp, _vp, _vp, _i64, _i64, _vp],
    "eb_adam8_blocks": [_vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _i32, _i32, _vp, _vp, _i32, _i32,
                        _vp, _vp, _vp, _i32, _i32, _vp, _vp, _i32, _i32, _vp, _i32, _i64, _i64, _i64, _i64],
    "eb_int8_gemm": [_vp, _vp, _vp, _vp, _vp, _vp, _i64, _vp, _i64, _i64, _i64],
    "eb_int8_prepare": [_vp, _i64, _i64, ctypes.c_float, _vp, _vp, _vp],
    "eb_fp32_to_fp8": [_vp, _vp, _i64, _i64, _i64, ctypes.c_float, _i32, _i32, _i32, _i32, _i32, _i32, _i32, _vp],
    "eb_fp8_to_fp32": [_vp, _vp, _vp, _i64, _i64, _i64, _vp],
    "eb_absmax_bits": [_vp, _i64],
}
_RESTYPES = {"eb_int8_prepare": ctypes.c_int, "eb_absmax_bits": ctypes.c_uint32}


def _cache_dir() -> Path:
    base = os.environ.get("EIGHTBIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "eightbit"
    )
    return Path(base)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    sources = b"".join(p.name.encode() + p.read_bytes() for p in sorted(_CSRC.glob("*.[ch]")))
    key = hashlib.sha256(sources + " ".join(_FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"eightbit_native_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in (["-fopenmp"], []):  # without OpenMP support the pragmas are ignored (one thread)
            res = subprocess.run([cc, *_FLAGS, *extra, *map(str, _SOURCES), "-o", tmp, "-lm"], capture_output=True,
                                 text=True, timeout=300)
            if res.returncode == 0:
                break
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip()[-2000:])
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded native library, or None (no compiler, build failure, or ``EIGHTBIT_NATIVE=0``)."""
    if os.environ.get("EIGHTBIT_NATIVE", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn("eightbit: no C compiler found; native CPU kernels disabled (slower fallback)", RuntimeWarning)
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except Exception as e:  # any build/load problem: fall back, say why once
        warnings.warn(f"eightbit: native CPU kernels unavailable ({e}); using the fallback", RuntimeWarning)
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    return lib


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a tensor's first element (None for None)."""
    return None if t is None else t.data_ptr()


# ---------------------------------------------------------------- output buffers backed by huge pages
_HUGE = 2 << 20  # x86-64 transparent huge page
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=None)
def _madvise():
    """libc's madvise where transparent huge pages can be requested (Linux with THP "madvise" or "always")."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    if "[never]" in mode:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty`` on CPU whose pages, for buffers of 4 MiB and more, are requested as 2 MiB transparent
    huge pages before anything touches them. Why: a fresh large buffer is a new mapping, and faulting it in
    4 KiB pages costs more than the kernels writing it (measured on this project's VM: 84 ms to fault 256 MB,
    the fill itself 15 ms; with huge pages 24 ms). The hint is best effort: without THP support it is
    plain ``torch.empty``."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    madvise = _madvise() if nbytes >= 2 * _HUGE else None
    if madvise is not None:
        start = -(-out.data_ptr() // _HUGE) * _HUGE  # whole huge pages inside the buffer only
        stop = (out.data_ptr() + nbytes) // _HUGE * _HUGE
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)  # a failure only loses the hint
    return out
