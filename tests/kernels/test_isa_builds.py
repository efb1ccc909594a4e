"""The native kernels' other instruction-set paths, built and tested on this machine.

``-march=native`` compiles only the paths of the CPU at hand (the AVX-512 VNNI tiles here, on an AVX-512 machine), so
the AVX2 paths that the project's Zen 3 machines run, and the plain C paths of CPUs without AVX, would otherwise go
untested wherever CI lands on a newer CPU. ``EIGHTBIT_NATIVE_ISA`` narrows the build; each narrowed library runs the
kernel-vs-reference test modules in a child process (a library is loaded once per process).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from eightbit.kernels.cpu import native

HERE = Path(__file__).parent
MODULES = ["test_native_cpu.py", "test_native_optim_many.py", "test_int8_cpu.py", "test_packed_lut.py"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the narrowing flags are x86 flags")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_kernels_match_references_on_narrower_isa(isa, seed):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    env = dict(os.environ, EIGHTBIT_NATIVE_ISA=isa, EIGHTBIT_TEST_SEED=str(seed))  # the child replays this seed
    probe = ("import sys; from eightbit.kernels.cpu import native; lib = native.library(); "
             "sys.exit(0 if lib is not None else 3)")
    built = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"the {isa} build failed: {built.stderr[-2000:]}"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(HERE / m) for m in MODULES]], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"EIGHTBIT_NATIVE_ISA={isa}:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"


def test_unknown_isa_is_refused(monkeypatch):
    monkeypatch.setenv("EIGHTBIT_NATIVE_ISA", "avx9000")
    with pytest.raises(ValueError, match="EIGHTBIT_NATIVE_ISA"):
        native._flags()
