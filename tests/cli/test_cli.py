"""The `eightbit` CLI through its real typer app (CliRunner) and the installed console script."""
import json
import re
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from eightbit.cli import app

runner = CliRunner()
COMMANDS = ["demo", "stream-demo", "quantize", "inspect", "eval", "outliers", "bench", "env"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "s.txt"
    path.write_text("The chef baked bread.\nThe storm flooded the streets.\nA nurse checked the patient.\n"
                    "The band played all night.\n")
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd):
    res = run(cmd, "--help")
    assert res.exit_code == 0 and "Usage" in res.output


def test_installed_script_help_and_bad_path(tmp_path):
    exe = shutil.which("eightbit")
    assert exe, "the eightbit console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(c in out.stdout for c in COMMANDS)
    out = subprocess.run([exe, "inspect", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error:")


def test_gpt2_round_trip(gpt2_dir, tmp_path, data_file):
    out = tmp_path / "q"
    res = run("quantize", gpt2_dir, "--method", "llm_int8", "--out", out)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "eightbit_config.json").read_text())
    assert meta["source"]["architecture"] == "GPT2LMHeadModel" and (out / "config.json").is_file()
    res = run("inspect", out)
    assert res.exit_code == 0, res.output
    assert "Linear8bitLt" in res.output and "transformer.h.1.mlp.c_fc" in res.output and "int8" in res.output
    res = run("eval", out, "--reference", gpt2_dir, "--data", data_file)
    assert res.exit_code == 0, res.output
    assert "top-1 token agreement" in res.output and "random token" in res.output


def test_minilm_static_round_trip(tmp_path, data_file):
    out = tmp_path / "m"
    res = run("quantize", "minilm", "--method", "int8-static", "--calibration-data", data_file, "--out", out)
    assert res.exit_code == 0, res.output
    assert (out / "tokenizer.json").is_file()
    res = run("inspect", out)
    assert res.exit_code == 0 and "LinearInt8Static" in res.output and "encoder.layer.5.output.dense" in res.output
    res = run("eval", out, "--data", data_file)  # reference from the recorded source
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "mean cosine" in ln)
    assert float(line.split()[-2]) > 0.9


def test_outliers_on_planted_model(tmp_path, data_file):
    from eightbit.models import build_gpt2_with_outliers

    model = build_gpt2_with_outliers(n_layer=2, n_embd=128, outlier_dims=(5, 77), seed=0)
    model.save_pretrained(tmp_path / "toy")
    png = tmp_path / "o.png"
    res = run("outliers", tmp_path / "toy", "--data", data_file, "--plot", png)
    assert res.exit_code == 0, res.output
    assert "emergent dims: 5 77" in res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the criterion's options reach every part of the report: table, summary line and Markdown alike (the planted
    # dims are outliers in 7 of the 10 hidden-width layers, so none is emergent at a layer fraction of 1)
    for extra in ([], ["--markdown"]):
        res = run("outliers", tmp_path / "toy", "--data", data_file, "--min-layer-frac", "1.0", *extra)
        assert res.exit_code == 0, res.output
        assert "[5, 77]" not in res.output and "yes" not in res.output and "emergent dims: none" in res.output


@pytest.mark.parametrize("args", [
    ["inspect", "{tmp}/nothing"],
    ["eval", "{tmp}/nothing"],
    ["quantize", "{tmp}/nothing", "--out", "{tmp}/o"],
    ["quantize", "{tmp}", "--out", "{tmp}/o"],          # a directory without config.json
    ["quantize", "{tmp}/weird", "--out", "{tmp}/o"],    # a model type transformers does not know
    ["outliers", "{tmp}/nothing"],
    ["outliers", "minilm", "--data", "{tmp}/missing.txt"],
])
def test_bad_paths_one_line_error(args, tmp_path):
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    res = run(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.strip().splitlines()[-1].startswith("error:")


def test_demo_refuses_more_sentences_than_it_has():
    """The demo's title states how many sentences ran: asking for more than the built-in 240 is an error, not a
    title that claims them (checked before any model loads)."""
    res = run("demo", "--model", "minilm", "--sentences", "1000")
    assert res.exit_code == 1 and "at most 240" in res.output, res.output


def test_bad_option_is_usage_error():
    res = run("quantize", "minilm", "--out", "x", "--method", "int4")
    assert res.exit_code == 2


def test_bench_missing_harness(tmp_path, monkeypatch):
    import eightbit.cli as cli

    monkeypatch.setattr(cli, "_bench_root", lambda: None)
    res = run("bench", "--quick")
    assert res.exit_code == 1 and "benchmark harness not found" in res.output


STREAM_LINE = re.compile(r"loaded (\d+\.\d\d) GB of fp32 weights with a peak of (\d+\.\d\d) GB \(final 8-bit footprint "
                         r"(\d+\.\d\d) GB, largest tensor (\d+\.\d\d) GB, bound (\d+\.\d\d) GB\)$", re.M)


@pytest.mark.slow
def test_demo_runs():
    res = run("demo", "--sentences", "8")
    assert res.exit_code == 0, res.output
    for text in ("all-MiniLM-L6-v2", "LLM.int8() threshold 6", "LLM.int8() threshold 0", "FP8 E4M3", "GPT-2", "AdamW8bit"):
        assert text in res.output
    m = STREAM_LINE.search(res.output)  # the streaming load at the end
    assert m and "Streaming load into LLM.int8(): loaded" in res.output, res.output
    peak, bound = float(m.group(2)), float(m.group(5))
    assert peak <= bound


def test_stream_demo_prints_peak_within_bound(tmp_path):
    ckpt = tmp_path / "ckpt"
    res = run("stream-demo", "--size-gb", "0.02", "--dir", ckpt)
    assert res.exit_code == 0, res.output
    m = STREAM_LINE.search(res.output)
    assert m, res.output
    size, peak, footprint, largest, bound = map(float, m.groups())
    assert 0.01 <= size <= 0.03 and 0 < footprint < size and largest <= size
    assert peak <= bound and abs(bound - (footprint + largest + 0.067)) <= 0.015  # bound = footprint + largest + 64 MiB
    assert "peak within the bound" in res.output and "llm_int8" in res.output
    assert (ckpt / "model.safetensors.index.json").is_file() and (ckpt / "config.json").is_file()
    # a kept checkpoint is never overwritten; bad sizes are one-line errors
    for args in (("--dir", ckpt), ("--size-gb", "0")):
        res = run("stream-demo", *args)
        assert res.exit_code == 1 and res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1


def test_env_reports_kernels_and_versions():
    """`eightbit env`: versions, the native library's state and every op with the devices its kernels serve; the
    JSON form agrees with the registry and torch."""
    from eightbit.functional import ops
    from eightbit.kernels import registered_kernels
    from eightbit.kernels.cpu import native

    res = run("env")
    assert res.exit_code == 0, res.output
    assert torch.__version__ in res.output and "native C kernels" in res.output
    assert all(op in res.output for op in ops.SCHEMAS)
    res = run("env", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["packages"]["torch"] == torch.__version__.split("+")[0] or r["packages"]["torch"] == torch.__version__
    assert r["native"]["loaded"] == (native.library() is not None)
    if r["native"]["loaded"]:
        from eightbit.env import NATIVE_PATHS

        assert set(r["native"]["paths"]) <= set(NATIVE_PATHS)
        assert ("avx512bf16 FP8 GEMM" in r["native"]["paths"]) == bool(native.library().eb_fp8_gemm_supported())
        assert r["native"]["amx"] == bool(native.library().eb_amx_usable())
        assert r["native"]["amx"] <= ("amx int8 GEMM" in r["native"]["paths"])  # in use only where built
    assert r["cuda"]["available"] == torch.cuda.is_available()
    assert set(r["kernels"]) == set(ops.SCHEMAS)
    assert {(op, d) for op, ds in r["kernels"].items() for d in ds} == set(registered_kernels())


@pytest.mark.parametrize("variables,expect", [({"EIGHTBIT_NATIVE": "0"}, "disabled by EIGHTBIT_NATIVE=0"),
                                              ({"EIGHTBIT_NATIVE_ISA": "avx9000"}, "EIGHTBIT_NATIVE_ISA must be")])
def test_env_says_why_native_kernels_are_off(variables, expect):
    """`python -m eightbit env` in a process where the native library cannot load names the reason, and the ops
    whose CPU kernels are native C then run their references (int8_mm's CPU kernel is torch's own int8 GEMM)."""
    import os
    import sys

    env = {**os.environ, **variables}
    out = subprocess.run([sys.executable, "-m", "eightbit", "env", "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert not r["native"]["loaded"] and expect in r["native"]["detail"]
    assert not r["cpp_ops"]["loaded"] and r["cpp_ops"]["detail"] == "needs the native C library"
    for op in ("optimizer_update", "optimizer_update_many", "quantize_blockwise", "int8_linear", "quantize_fp8"):
        assert "cpu" not in r["kernels"][op], op
    assert variables.items() <= r["settings"].items()  # (plus any EIGHTBIT_* the caller set, e.g. CI's cache dir)


@pytest.mark.parametrize("isa,absent", [("avx2", "avx512"), ("generic", "avx2")])
def test_env_names_the_code_paths_of_a_narrowed_build(isa, absent):
    """EIGHTBIT_NATIVE_ISA narrows the build; `eightbit env` reports the narrower code paths (none of the wider
    ISA's)."""
    import os
    import platform
    import sys

    from eightbit.kernels.cpu import native

    if platform.machine() not in ("x86_64", "AMD64") or native._compiler() is None:
        pytest.skip("the narrowing flags are x86 compiler flags")
    env = {**os.environ, "EIGHTBIT_NATIVE_ISA": isa}
    out = subprocess.run([sys.executable, "-m", "eightbit", "env", "--json"], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["native"]["loaded"] and r["native"]["isa"] == isa
    assert not any(p.startswith(absent) for p in r["native"]["paths"]), r["native"]["paths"]
    if isa == "avx2" and "avx2" in (r["cpu"]["features"] or {}) and r["cpu"]["features"]["avx2"]:
        assert r["native"]["paths"] == ["avx2 8-lane"]


def test_a_quantized_or_mismatched_directory_is_not_loaded_as_a_float_model(gpt2_dir, tmp_path):
    """A directory whose checkpoint does not hold the model's weights (an eightbit quantized directory, or another
    model's weights under this config) ran on transformers' random initial weights with exit code 0; now every
    command that loads a float model stops with a one-line error."""
    q = tmp_path / "q"
    assert run("quantize", gpt2_dir, "--method", "llm_int8", "--out", q).exit_code == 0
    res = run("quantize", q, "--out", tmp_path / "q2")
    assert res.exit_code == 1 and "quantized directory" in res.output.strip().splitlines()[-1]
    other = tmp_path / "other"  # GPT-2's config, a checkpoint with other names
    shutil.copytree(gpt2_dir, other)
    from safetensors.torch import load_file, save_file

    st = load_file(other / "model.safetensors")
    save_file({"x." + k: v for k, v in st.items()}, other / "model.safetensors", metadata={"format": "pt"})
    res = run("quantize", other, "--out", tmp_path / "q3")
    assert res.exit_code == 1 and "random weights" in res.output.strip().splitlines()[-1], res.output
