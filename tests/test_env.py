"""eightbit.env's helpers (shared with benchmarks/machine.py)."""
import builtins
import importlib.metadata
import os

import pytest

from eightbit.env import cpuinfo, package_version


def test_package_version():
    assert package_version("torch") == importlib.metadata.version("torch")
    assert package_version("no-such-distribution-eightbit") is None


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads /proc/cpuinfo")
def test_cpuinfo_reads_model_and_flags():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    model, flags = cpuinfo()
    first_flags = next(ln for ln in text.splitlines() if ln.split(":")[0].strip() == "flags")
    assert flags == set(first_flags.partition(":")[2].split())
    assert model in text


def test_cpuinfo_without_proc_gives_unknown_flags(monkeypatch):
    def no_file(*a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(builtins, "open", no_file)
    model, flags = cpuinfo()
    assert flags is None and isinstance(model, str) and model
