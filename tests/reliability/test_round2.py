"""Reliability round 2: the hostile cases a review found (issue 17), one test each (or a few), all of which
failed before their fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import eightbit.optim as O
from eightbit.nn import Linear8bitLt, LinearFP8, LinearInt8Static
from eightbit.quantize import FP8Config, Int8Config, load_quantized, quantize_model, save_quantized


class MLP(nn.Module):
    def __init__(self, shared: bool = False):
        super().__init__()
        self.a = nn.Linear(32, 48)
        self.b = nn.Linear(48, 48)
        self.c = nn.Linear(48, 16)
        if shared:
            self.b_again = self.b  # one module registered under two names

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h))
        if hasattr(self, "b_again"):
            h = torch.relu(self.b_again(h))
        return self.c(h)


def _fresh(shared: bool = False, device: str | None = None) -> MLP:
    torch.manual_seed(0)
    if device is None:
        return MLP(shared)
    with torch.device(device):
        return MLP(shared)


# 1 ---------------------------------------------------------------- mixed methods save and load
def test_model_quantized_with_two_methods_saves_and_loads(tmp_path):
    model = _fresh()
    quantize_model(model, Int8Config(threshold=6.0), modules=["a"])
    quantize_model(model, FP8Config(activation="dynamic", skip_modules=()))
    assert isinstance(model.a, Linear8bitLt) and isinstance(model.b, LinearFP8) and isinstance(model.c, LinearFP8)
    x = torch.randn(5, 32)
    want = model(x)
    save_quantized(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "eightbit_config.json").read_text())
    methods = sorted(g["config"]["method"] for g in meta["groups"])
    assert methods == ["fp8", "llm_int8"]
    loaded = load_quantized(tmp_path / "ckpt", _fresh())
    assert isinstance(loaded.a, Linear8bitLt) and isinstance(loaded.b, LinearFP8)
    assert torch.equal(loaded(x), want)
    save_quantized(loaded, tmp_path / "again")  # what was loaded saves the same groups
    again = json.loads((tmp_path / "again" / "eightbit_config.json").read_text())
    assert again["groups"] == meta["groups"]


@pytest.mark.parametrize("damage", ["groups-miss-a-layer", "groups-in-version-1", "group-config-bad"])
def test_damaged_groups_are_refused(tmp_path, damage):
    model = _fresh()
    quantize_model(model, Int8Config(), modules=["a"])
    quantize_model(model, FP8Config(activation="dynamic", skip_modules=()))
    save_quantized(model, tmp_path / "ckpt")
    cfg_file = tmp_path / "ckpt" / "eightbit_config.json"
    meta = json.loads(cfg_file.read_text())
    assert meta["format_version"] == 2
    if damage == "groups-miss-a-layer":
        meta["groups"][0]["modules"] = []
    elif damage == "groups-in-version-1":
        meta["format_version"] = 1
    else:
        meta["groups"][1]["config"]["format"] = "e9m9"
    cfg_file.write_text(json.dumps(meta))
    fresh = _fresh()
    with pytest.raises(ValueError):
        load_quantized(tmp_path / "ckpt", fresh)
    assert type(fresh.a) is nn.Linear and type(fresh.b) is nn.Linear


def test_single_method_checkpoints_keep_the_version_1_layout(tmp_path):
    save_quantized(quantize_model(_fresh(), Int8Config()), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "eightbit_config.json").read_text())
    assert meta["format_version"] == 1 and "groups" not in meta


def test_layer_without_recorded_config_refuses_to_save(tmp_path):
    model = _fresh()
    model.a = Linear8bitLt.from_linear(model.a)  # made by hand: nothing says how to rebuild it
    with pytest.raises(ValueError, match="no recorded config"):
        save_quantized(model, tmp_path / "ckpt")


# 2 ---------------------------------------------------------------- shared modules stay shared
def test_shared_linear_is_quantized_once_and_stays_shared(tmp_path):
    model = _fresh(shared=True)
    x = torch.randn(4, 32)
    quantize_model(model, Int8Config())
    assert isinstance(model.b_again, Linear8bitLt) and model.b_again is model.b
    assert not any(type(m) is nn.Linear for m in model.modules())
    want = model(x)
    save_quantized(model, tmp_path / "ckpt")
    loaded = load_quantized(tmp_path / "ckpt", _fresh(shared=True))
    assert loaded.b_again is loaded.b and isinstance(loaded.b, Linear8bitLt)
    assert torch.equal(loaded(x), want)


# 3 ---------------------------------------------------------------- loading into a meta-device model
def test_load_into_meta_model_materializes_every_tensor(tmp_path):
    model = quantize_model(_fresh(), Int8Config())
    x = torch.randn(3, 32)
    want = model(x)
    save_quantized(model, tmp_path / "ckpt")
    skeleton = _fresh(device="meta")
    loaded = load_quantized(tmp_path / "ckpt", skeleton)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert torch.equal(loaded(x), want)


def test_load_into_meta_model_refuses_what_the_checkpoint_cannot_fill(tmp_path):
    model = quantize_model(_fresh(), Int8Config())
    save_quantized(model, tmp_path / "ckpt")
    skeleton = _fresh(device="meta")
    skeleton.register_buffer("table", torch.empty(3, device="meta"), persistent=False)
    with pytest.raises(ValueError, match="meta tensors"):
        load_quantized(tmp_path / "ckpt", skeleton)
    assert type(skeleton.a) is nn.Linear  # untouched


# 4 ---------------------------------------------------------------- float64 parameters keep their precision
@pytest.mark.parametrize("cls", [O.Adam32bit, O.AdamW8bit, O.SGD8bit, O.Lion32bit])
def test_float64_parameters_untouched_at_lr0(cls):
    p = nn.Parameter(torch.randn(5000, dtype=torch.float64) * 1e-3 + 1.0)  # values float32 cannot hold
    before = p.detach().clone()
    opt = cls([p], lr=0.0) if cls is not O.SGD8bit else cls([p], lr=0.0, momentum=0.9)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    assert p.dtype == torch.float64 and torch.equal(p.detach(), before)


def test_adam32bit_float64_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    p1 = nn.Parameter(torch.randn(3000, generator=g, dtype=torch.float64))
    p2 = nn.Parameter(p1.detach().clone())
    o1, o2 = O.Adam32bit([p1], lr=1e-3, weight_decay=0.01), torch.optim.Adam([p2], lr=1e-3, weight_decay=0.01)
    for _ in range(20):
        grad = torch.randn(3000, generator=g, dtype=torch.float64)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        o1.step()
        o2.step()
    assert o1.state[p1]["exp_avg"].dtype == torch.float64
    # float64 arithmetic on both sides (the op order differs slightly): ~1e-16 relative per step
    torch.testing.assert_close(p1.detach(), p2.detach(), rtol=1e-12, atol=1e-14)


# 5 ---------------------------------------------------------------- complex parameters
def test_complex_parameters_step_as_torch_does():
    g = torch.Generator().manual_seed(1)
    p1 = nn.Parameter(torch.randn(2000, dtype=torch.complex64, generator=g))
    p2 = nn.Parameter(p1.detach().clone())
    o1, o2 = O.Adam32bit([p1], lr=1e-2), torch.optim.Adam([p2], lr=1e-2)
    for _ in range(10):
        grad = torch.randn(2000, dtype=torch.complex64, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p1.detach(), p2.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nonfinite", ["skip", "propagate"])
def test_complex_parameters_8bit_update_both_parts(nonfinite):
    p = nn.Parameter(torch.randn(8192, dtype=torch.complex64))
    before = p.detach().clone()
    opt = O.AdamW8bit([p], lr=1e-2, nonfinite=nonfinite)
    p.grad = torch.randn_like(p)
    opt.step()
    delta = p.detach() - before
    assert (delta.real != 0).float().mean() > 0.9 and (delta.imag != 0).float().mean() > 0.9
    assert opt.state[p]["state1"].dtype == torch.uint8  # 16384 real values: 8-bit state


# 6 ---------------------------------------------------------------- add_param_group validates like the constructor
@pytest.mark.parametrize("bad, err", [
    ({"lr": -1.0}, ValueError), ({"blocksize": 100}, ValueError), ({"optim_bits": 3}, ValueError),
    ({"nonfinite": "whatever"}, ValueError), ({"betas": (1.5, 0.9)}, ValueError),
    ({"stochastic_rounding": "yes"}, TypeError),
])
def test_add_param_group_rejects_what_the_constructor_rejects(bad, err):
    opt = O.AdamW8bit([nn.Parameter(torch.randn(10))], lr=1e-3)
    with pytest.raises(err):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(10))], **bad})
    assert len(opt.param_groups) == 1  # not added


def test_add_param_group_rejects_bad_nesterov_and_lars_momentum():
    opt = O.SGD8bit([nn.Parameter(torch.randn(10))], lr=1e-3, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(10))], "momentum": 0.0})
    lars = O.LARS8bit([nn.Parameter(torch.randn(10))], lr=1e-3)
    with pytest.raises(ValueError, match="momentum"):
        lars.add_param_group({"params": [nn.Parameter(torch.randn(10))], "momentum": 0.0})


# 7 ---------------------------------------------------------------- damaged configs: one clear ValueError
@pytest.mark.parametrize("damage", ["deep-nesting", "huge-threshold", "deep-skip-modules"])
def test_pathological_config_json_is_a_clear_value_error(tmp_path, damage):
    model = quantize_model(_fresh(), Int8Config())
    save_quantized(model, tmp_path / "ckpt")
    cfg_file = tmp_path / "ckpt" / "eightbit_config.json"
    text = cfg_file.read_text()
    if damage == "deep-nesting":
        text = text.replace('"aliases": {}', '"aliases": ' + "[" * 100_000 + "]" * 100_000)
    elif damage == "huge-threshold":
        text = text.replace('"threshold": 6.0', '"threshold": 1' + "0" * 400)
    else:
        text = text.replace('"skip_modules": [', '"skip_modules": [' + "[" * 5000 + "]" * 5000 + ", ")
    cfg_file.write_text(text)
    fresh = _fresh()
    with pytest.raises(ValueError):
        load_quantized(tmp_path / "ckpt", fresh)
    assert type(fresh.a) is nn.Linear


# 8 ---------------------------------------------------------------- .double()
@pytest.mark.parametrize("make", [
    lambda lin: Linear8bitLt.from_linear(lin),
    lambda lin: LinearFP8.from_linear(lin, activation="dynamic"),
    lambda lin: LinearInt8Static.from_linear(lin),
])
def test_double_keeps_codes_and_accepts_float64_inputs(make):
    lin = nn.Linear(16, 8)
    layer = make(lin)
    x = torch.randn(3, 16)
    if getattr(layer, "needs_calibration", False):
        layer.start_observing()
        layer(x)
        layer.finish_observing()
    want = layer(x)
    codes = {k: v.dtype for k, v in layer.state_dict().items() if k != "bias"}
    layer = layer.double()
    assert {k: v.dtype for k, v in layer.state_dict().items() if k != "bias"} == codes
    y64 = layer(x.double())
    assert y64.dtype == torch.float64 and torch.equal(y64.float(), want)
    assert torch.equal(layer(x), want)


# 9 ---------------------------------------------------------------- CLI output written atomically
from tests.cli.test_cli import gpt2_dir  # noqa: E402,F401  (the CLI tests' tiny GPT-2 directory fixture)


def _cli(*args):
    from typer.testing import CliRunner

    from eightbit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_refuses_non_empty_out_and_overwrite_leaves_no_stale_files(gpt2_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")  # an earlier model's tokenizer
    res = _cli("quantize", gpt2_dir, "--out", out)
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    res = _cli("quantize", gpt2_dir, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "tokenizer.json").exists() and (out / "eightbit_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary directories left
    assert _cli("inspect", out).exit_code == 0


def test_cli_read_only_out_is_one_line(gpt2_dir, tmp_path, monkeypatch):
    """A read-only parent of --out (simulated: this suite may run as root, which ignores permissions)."""
    import tempfile

    def denied(*a, dir=None, **k):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    res = _cli("quantize", gpt2_dir, "--out", tmp_path / "q")
    assert res.exit_code == 1 and res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    assert "Permission denied" in res.output and not (tmp_path / "q").exists()


def test_cli_any_os_error_is_one_line(gpt2_dir, tmp_path, monkeypatch):
    """A full disk (or any OSError while writing) is one error line, and no partial output is left."""
    import eightbit.quantize.serialization as ser

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "q" / "model.safetensors"))

    monkeypatch.setattr(ser, "save_quantized", full_disk)
    res = _cli("quantize", gpt2_dir, "--out", tmp_path / "q")
    assert res.exit_code == 1 and "No space left on device" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_interrupt_while_writing_leaves_no_output(gpt2_dir, tmp_path, monkeypatch):
    import eightbit.models.local as local

    def interrupted(out: Path, *a, **k):
        (out / "tokenizer.json").write_text("{")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "save_source_files", interrupted)
    res = _cli("quantize", gpt2_dir, "--out", tmp_path / "q")
    assert res.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # `inspect` has nothing half-written to accept
