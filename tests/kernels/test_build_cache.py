"""The native build cache cannot crash a process: a damaged cached library is rebuilt, not loaded; the key covers
what the binary depends on; leftovers of killed builds are removed; a failed build says why in one line; with no
C compiler every op runs its reference."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from eightbit.kernels.cpu import native

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")

# A child that uses every kind of kernel and checks it against the references.
_CHILD = textwrap.dedent("""
    import warnings, torch
    warnings.simplefilter("always")
    import eightbit.functional as F
    from eightbit.kernels import reference_only
    from eightbit.kernels.cpu import native
    import eightbit.optim as O
    x = torch.randn(5000)
    q, s = F.quantize_blockwise(x, blocksize=256)
    with reference_only():
        qr, sr = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(q, qr)
    w = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    y = F.int8_linear(torch.randn(3, 64), w, torch.rand(16) + 0.1)
    assert torch.isfinite(y).all()
    p = torch.nn.Parameter(torch.randn(4096 * 2))
    p.grad = torch.randn_like(p)
    O.AdamW8bit([p], 1e-3).step()
    assert torch.isfinite(p.detach()).all()
    print("NATIVE", native.library() is not None)
""")


def _run_child(env_extra: dict[str, str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EIGHTBIT_CACHE_DIR": str(cache), **env_extra}
    return subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=600)


def _seed_cache(cache: Path) -> Path:
    """Copy this process's valid library into ``cache`` (no rebuild needed for the first use)."""
    lib = native.library()
    assert lib is not None
    src = Path(lib._name)
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, cache / src.name)
    shutil.copy(src.with_suffix(".sha256"), cache / src.with_suffix(".sha256").name)
    return cache / src.name


def test_truncated_library_is_rebuilt_not_loaded(tmp_path):
    target = _seed_cache(tmp_path)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3])  # what a build killed mid-write or a full disk leaves
    res = _run_child({}, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]  # no SIGBUS
    assert "NATIVE True" in res.stdout
    assert target.read_bytes() != data[: len(data) // 3] and native._valid(target)


def test_library_without_digest_is_not_trusted(tmp_path):
    target = _seed_cache(tmp_path)
    target.with_suffix(".sha256").unlink()
    assert not native._valid(target)
    corrupted = bytearray(target.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    target.write_bytes(bytes(corrupted))
    (tmp_path / (target.stem + ".sha256")).write_text("0" * 64)
    assert not native._valid(target)


def test_key_covers_cpu_compiler_torch_and_sources(monkeypatch):
    cc = native._compiler()
    base = native.build_key(cc)
    monkeypatch.setattr(native, "_cpu_features", lambda: "flags : sse2 avx512f")
    assert native.build_key(cc) != base
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert native.build_key(cc) != base
    monkeypatch.undo()
    monkeypatch.setattr(native, "_FLAGS", native._FLAGS + ["-DEXTRA"])
    assert native.build_key(cc) != base
    monkeypatch.undo()
    assert native.build_key(cc) == base


def test_stale_build_temporaries_are_removed(tmp_path):
    old, fresh = tmp_path / "tmpabc.so", tmp_path / "tmpdef.so"
    old.write_bytes(b"half a library")
    fresh.write_bytes(b"a build in progress")
    past = time.time() - 2 * native._STALE_SECONDS
    os.utime(old, (past, past))
    native._clean_stale(tmp_path)
    assert not old.exists() and fresh.exists()  # a concurrent build's temporary is left alone


def test_failed_build_says_why_in_one_line(tmp_path, monkeypatch):
    cc = tmp_path / "badcc"
    cc.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo badcc 1.0; exit 0; fi\n"
                  "echo 'In file included from x.c:1:' >&2\necho 'x.c:3:5: error: unknown type name foo' >&2\n"
                  "echo '    3 | foo bar;' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setattr(native, "_compiler", lambda: str(cc))
    monkeypatch.setenv("EIGHTBIT_CACHE_DIR", str(tmp_path / "cache"))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning) as record:
            assert native.library() is None
        message = str(record[0].message)
        assert "\n" not in message and "error: unknown type name foo" in message
        assert not list((tmp_path / "cache").glob("tmp*"))  # the failed build left nothing behind
    finally:
        native.library.cache_clear()


def test_no_compiler_every_op_runs_its_reference(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    res = _run_child({"PATH": str(bare), "CC": ""}, tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "NATIVE False" in res.stdout
    assert res.stderr.count("no C compiler found") == 1  # said once
