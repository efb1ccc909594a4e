"""Damaged checkpoints: every corruption of a save_quantized directory (Int8Config and FP8Config models)
must raise a clear FileNotFoundError/ValueError AND leave the target model exactly as it was (module types
and state_dict). Also: optimizer state_dicts with wrong shapes/dtypes must be refused at load time."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import eightbit
import eightbit.optim as O
from eightbit import FP8Config, Int8Config
from eightbit.quantize.serialization import CONFIG_NAME, WEIGHTS_NAME


class Tiny(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 24)
        self.lm_head = nn.Linear(24, 5)  # skipped by the default skip_modules

    def forward(self, x):
        return self.lm_head(self.fc2(torch.relu(self.norm(self.fc1(x)))))


CONFIGS = {"int8": lambda: Int8Config(), "fp8": lambda: FP8Config(format="e4m3")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One pristine checkpoint per config kind, saved once."""
    out = {}
    for kind, make in CONFIGS.items():
        model = eightbit.quantize_model(Tiny(0), make())
        if kind == "fp8":
            eightbit.calibrate(model, [torch.randn(8, 16, generator=torch.Generator().manual_seed(1))], progress=False)
        path = tmp_path_factory.mktemp(kind)
        eightbit.save_quantized(model, path)
        out[kind] = path
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_json(path: Path, fn) -> None:
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta = fn(meta)
    (path / CONFIG_NAME).write_text(json.dumps(meta))


def _rewrite_tensors(path: Path, fn, update_size: bool = True) -> None:
    """Rewrite model.safetensors through ``fn(tensors)`` and (as an editing user would) fix weights_bytes."""
    tensors = load_file(str(path / WEIGHTS_NAME))
    save_file(fn(tensors), str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    if update_size:
        size = (path / WEIGHTS_NAME).stat().st_size
        _edit_json(path, lambda m: {**m, "weights_bytes": size})


def _first_key(tensors: dict, suffix: str) -> str:
    return next(k for k in tensors if k.endswith(suffix))


def _set(d: dict, key: str, value) -> dict:
    d = dict(d)
    d[key] = value
    return d


def _cfg(meta: dict, **changes) -> dict:
    return _set(meta, "config", {**meta["config"], **changes})


def _truncate(path: Path, keep_size_record: bool) -> None:
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    if not keep_size_record:
        _edit_json(path, lambda m: {**m, "weights_bytes": len(data) // 2})


def _code_key(kind: str) -> str:
    return "weight_int8" if kind == "int8" else "weight"


def _set_tensor(kind, change):
    def fn(t):
        key = _first_key(t, "fc1." + _code_key(kind))
        t[key] = change(t[key])
        return t
    return fn


# name -> (corruption(path, kind), expected exception(s), message regex)
CORRUPTIONS = {
    "truncated-size-mismatch": (lambda p, k: _truncate(p, True), ValueError, "truncated|bytes"),
    "truncated-size-updated": (lambda p, k: _truncate(p, False), ValueError, "corrupt|truncated"),
    "garbage-weights": (lambda p, k: ((p / WEIGHTS_NAME).write_bytes(b"\x00" * (p / WEIGHTS_NAME).stat().st_size)),
                        ValueError, "corrupt|truncated"),
    "wrong-dtype": (lambda p, k: _rewrite_tensors(p, _set_tensor(k, lambda v: v.view(torch.uint8).float())), ValueError, "dtype"),
    "wrong-shape": (lambda p, k: _rewrite_tensors(p, _set_tensor(k, lambda v: v[:-1].contiguous())), ValueError, "shape"),
    "missing-tensor": (lambda p, k: _rewrite_tensors(p, lambda t: {a: b for a, b in t.items() if not a.startswith("norm.")}),
                       ValueError, "missing"),
    "extra-tensor": (lambda p, k: _rewrite_tensors(p, lambda t: {**t, "intruder": torch.zeros(3)}), ValueError, "unexpected"),
    "bad-method": (lambda p, k: _edit_json(p, lambda m: _cfg(m, method="bogus")), ValueError, "method"),
    "other-method": (lambda p, k: _edit_json(p, lambda m: _set(m, "config", (FP8Config() if k == "int8" else Int8Config()).to_dict())),
                     ValueError, "missing|unexpected|shape|dtype"),
    "unknown-field": (lambda p, k: _edit_json(p, lambda m: _cfg(m, bogus_field=1)), ValueError, "unknown field"),
    "bad-value": (lambda p, k: _edit_json(p, lambda m: _cfg(m, threshold=-1.0) if k == "int8" else _cfg(m, format="e3m4")),
                  ValueError, "threshold|format"),
    "ill-typed-value": (lambda p, k: _edit_json(p, lambda m: _cfg(m, threshold="high") if k == "int8" else _cfg(m, percentile="x")),
                        ValueError, "threshold|percentile"),
    "format-version": (lambda p, k: _edit_json(p, lambda m: _set(m, "format_version", 99)), ValueError, "format_version"),
    "format-version-str": (lambda p, k: _edit_json(p, lambda m: _set(m, "format_version", "1")), ValueError, "format_version"),
    "config-list": (lambda p, k: _edit_json(p, lambda m: _set(m, "config", [m["config"]])), ValueError, "config|JSON object"),
    "meta-list": (lambda p, k: _edit_json(p, lambda m: [m]), ValueError, "eightbit checkpoint"),
    "not-json": (lambda p, k: (p / CONFIG_NAME).write_text("{not json"), ValueError, "JSON"),
    "modules-missing-name": (lambda p, k: _edit_json(p, lambda m: _set(m, "quantized_modules", m["quantized_modules"] + ["fc9"])),
                             ValueError, "fc9"),
    "modules-not-linear": (lambda p, k: _edit_json(p, lambda m: _set(m, "quantized_modules", m["quantized_modules"] + ["norm"])),
                           ValueError, "norm"),
    "modules-dict": (lambda p, k: _edit_json(p, lambda m: _set(m, "quantized_modules", {"fc1": 1})), ValueError, "quantized_modules"),
    "alias-missing-target": (lambda p, k: _edit_json(p, lambda m: _set(m, "aliases", {"fc1.bias": "nowhere"})), ValueError, "alias"),
    "weights-bytes-str": (lambda p, k: _edit_json(p, lambda m: _set(m, "weights_bytes", "12")), ValueError, "weights_bytes"),
    "deleted-weights": (lambda p, k: (p / WEIGHTS_NAME).unlink(), FileNotFoundError, "safetensors|not found"),
    "deleted-config": (lambda p, k: (p / CONFIG_NAME).unlink(), FileNotFoundError, "not found|checkpoint"),
}


def _snapshot(model: nn.Module):
    types = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return types, state


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_damaged_checkpoint_is_refused_and_model_untouched(checkpoints, tmp_path, kind, corruption):
    damage, exc, match = CORRUPTIONS[corruption]
    path = _copy(checkpoints[kind], tmp_path / "ckpt")
    damage(path, kind)
    target = Tiny(123)
    types, state = _snapshot(target)
    with pytest.raises(exc, match=match):
        eightbit.load_quantized(path, target)
    types2, state2 = _snapshot(target)
    assert types2 == types
    assert state2.keys() == state.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    assert getattr(target, "_eightbit_config", None) is None


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_pristine_checkpoint_loads(checkpoints, kind):
    """Control: the undamaged copy loads (so each corruption above is what triggers its error)."""
    model = eightbit.load_quantized(checkpoints[kind], Tiny(123))
    assert type(model.fc1).__name__ != "Linear" and type(model.lm_head) is nn.Linear
    assert torch.isfinite(model(torch.randn(2, 16))).all()


def test_missing_directory(tmp_path):
    target = Tiny(1)
    with pytest.raises(FileNotFoundError):
        eightbit.load_quantized(tmp_path / "nope", target)
    with pytest.raises(TypeError, match="model"):
        eightbit.load_quantized(tmp_path, "not a model")


# ---------------------------------------------------------------- optimizer state_dict
def _adamw8bit_state():
    p = nn.Parameter(torch.randn(64, 128))
    opt = O.AdamW8bit([p], lr=1e-3, blocksize=256)
    p.grad = torch.randn_like(p)
    opt.step()
    return p, opt.state_dict()


OPT_CORRUPTIONS = {
    "state1-too-short": lambda st: st.__setitem__("state1", st["state1"][:32].clone()),
    "state1-too-long": lambda st: st.__setitem__("state1", torch.zeros(64 * 128 + 512, dtype=torch.uint8)),
    "absmax-too-few": lambda st: st.__setitem__("absmax1", st["absmax1"][:3].clone()),
    "absmax-too-many": lambda st: st.__setitem__("absmax1", torch.ones(100)),
    "state1-float32-codes": lambda st: st.__setitem__("state1", st["state1"].float()),
    "absmax-float16": lambda st: st.__setitem__("absmax1", st["absmax1"].half()),
    "state2-missing": lambda st: st.pop("state2"),
    "qmap-unsorted": lambda st: st.__setitem__("qmap1", st["qmap1"].flip(0)),
    "qmap-short": lambda st: st.__setitem__("qmap2", st["qmap2"][:100].clone()),
    "blocksize-bad": lambda st: st.__setitem__("blocksize", 100),
    "blocksize-mismatch": lambda st: st.__setitem__("blocksize", 2048),
}


@pytest.mark.parametrize("corruption", list(OPT_CORRUPTIONS))
def test_optimizer_state_dict_with_wrong_shapes_is_refused(corruption):
    p, sd = _adamw8bit_state()
    OPT_CORRUPTIONS[corruption](sd["state"][0])
    p2 = nn.Parameter(p.detach().clone())
    opt = O.AdamW8bit([p2], lr=5e-4, blocksize=256)
    p2.grad = torch.randn_like(p2)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p2].items()}
    with pytest.raises(ValueError, match="state|absmax|qmap|blocksize|exp_avg"):
        opt.load_state_dict(sd)
    # the optimizer is left exactly as it was
    assert opt.param_groups[0]["lr"] == 5e-4
    assert opt.state[p2].keys() == before.keys() and all(torch.equal(opt.state[p2][k], before[k]) for k in before)


def test_optimizer_state_dict_wrong_param_count_is_refused():
    p, sd = _adamw8bit_state()
    opt = O.AdamW8bit([nn.Parameter(p.detach().clone()), nn.Parameter(torch.randn(3))], lr=1e-3)
    with pytest.raises(ValueError, match="size|parameters|param"):
        opt.load_state_dict(sd)
