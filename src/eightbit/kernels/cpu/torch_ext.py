"""Loader of the C++ op kernels in ``cpp/``: the CPU kernel of ``eightbit::int8_linear`` registered with the
dispatcher from C++, so that a call costs no round trip into Python (MiniLM at batch 1: ~15 us of ~35 us a layer).

Built once per machine with the system C++ compiler against the installed torch's headers and libraries, cached like
the native C library (:func:`.native.build_cached`; the file name hashes the source, the flags, the compiler's and
torch's versions), and loaded with ``torch.ops.load_library``. The C++ kernel calls the native C functions
``eb_int8_linear`` and ``eb_int8_linear_scratch`` (their addresses and the Python kernel's limits bound by
kernels/cpu/int8.py right after it registers) and hands every case it does not take to the Python kernel, which it
reaches as ``eightbit_cpu::int8_linear_py``. Without a C++ compiler, with ``EIGHTBIT_NATIVE=0`` or
``EIGHTBIT_CPP=0``, or when the build fails (a one-line warning says why), nothing is loaded and the Python kernel
serves ``eightbit::int8_linear`` itself.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from .. import registry
from . import native

__all__ = ["bind_int8_linear", "int8_linear_loaded", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("cpp") / "int8_linear_op.cpp"
_FLAGS = ["-O2", "-shared", "-fPIC", "-std=c++17", "-w"]  # -w: torch's headers warn under C++17


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _torch_flags() -> list[str]:
    """Include, ABI and link flags of the installed torch (what torch.utils.cpp_extension would pass)."""
    root = Path(torch.__file__).parent
    lib = root / "lib"
    return [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-L{lib}", "-lc10", "-ltorch_cpu",
            "-ltorch", f"-Wl,-rpath,{lib}"]


def _build(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    flags = _FLAGS + _torch_flags()
    h = hashlib.sha256(_SOURCE.read_bytes())
    for part in (" ".join(flags), version, torch.__version__, str(torch.version.git_version)):
        h.update(b"\0" + part.encode())

    def compile_to(out: str) -> None:
        res = subprocess.run([cxx, str(_SOURCE), "-o", out, *flags], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            err = res.stderr.strip()
            lines = [ln for ln in err.splitlines() if "error" in ln] or err.splitlines() or ["no output"]
            raise RuntimeError(f"{Path(cxx).name} failed: {lines[0].strip()[:300]}")

    return native.build_cached(f"eightbit_ops_{h.hexdigest()[:20]}.so", compile_to)


_WHY_NOT: list[str] = []  # why int8_linear_loaded() is False (one entry once it has been asked)


def unavailable_reason() -> str | None:
    """Why the C++ op kernels are not loaded (None when they are)."""
    return None if int8_linear_loaded() else (_WHY_NOT[0] if _WHY_NOT else "not loaded")


@functools.lru_cache(maxsize=None)
def int8_linear_loaded() -> bool:
    """Whether the C++ kernel of ``eightbit::int8_linear`` is registered for CPU (built and loaded on first call).
    When it is, the Python kernel must be registered as ``eightbit_cpu::int8_linear_py`` instead."""
    if os.environ.get("EIGHTBIT_CPP", "1") == "0" or native.library() is None:
        _WHY_NOT.append("disabled by EIGHTBIT_CPP=0" if os.environ.get("EIGHTBIT_CPP", "1") == "0"
                        else "needs the native C library")
        return False
    cxx = _compiler()
    if cxx is None:
        _WHY_NOT.append("no C++ compiler found (set CXX or install c++/g++/clang++)")
        return False  # the Python kernel serves the op; no warning: a C++ compiler is optional
    try:
        torch.ops.load_library(str(_build(cxx)))
    except Exception as e:  # any build/load problem: the Python kernel serves the op, say why once
        _WHY_NOT.append(f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
        _warn(e)
        return False
    # reference_only() switches the C++ kernel's own thread-local flag too
    registry._SWITCH_HOOKS.append(torch.ops.eightbit_cpu.set_reference)
    return True  # loaded means registered: until bind_int8_linear, the C++ kernel hands every call to Python


def bind_int8_linear(*, max_k: int, outlier_cap: int, scratch_keep: int, guesses_kept: int) -> bool:
    """Gives the loaded C++ kernel the native functions it calls (``eb_int8_linear`` and the scratch layout,
    ``eb_int8_linear_scratch``) and the Python kernel's limits (the K up to which int32 sums stay exact, the
    outlier columns summed in the epilogue, the scratch bytes and guessed weights kept per thread), so that each
    is defined once (kernels/cpu/int8.py). False (with a warning) if binding fails: the Python kernel then serves
    every call through the C++ one."""
    lib = native.library()
    try:
        address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        torch.ops.eightbit_cpu.bind_int8_linear(address(lib.eb_int8_linear), address(lib.eb_int8_linear_scratch),
                                                max_k, outlier_cap, scratch_keep, guesses_kept)
    except Exception as e:  # noqa: BLE001
        _warn(e)
        return False
    return True


def _warn(e: Exception) -> None:
    reason = " ".join(str(e).split())[:400]
    warnings.warn(f"eightbit: C++ op kernels unavailable ({type(e).__name__}: {reason}); the Python kernels run "
                  "instead", RuntimeWarning, stacklevel=3)
