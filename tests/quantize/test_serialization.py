"""save_quantized / load_quantized with Int8Config: identical outputs after reload into a fresh float model,
and every damaged checkpoint gives a clear error while leaving the model exactly as it was."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from eightbit import Int8Config, load_quantized, quantize_model, save_quantized
from eightbit.nn import Linear8bitLt
from eightbit.quantize.serialization import CONFIG_NAME, WEIGHTS_NAME

transformers = pytest.importorskip("transformers")
VOCAB = 61


def _fresh_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg).eval()  # lm_head tied to wte: exercises tensor aliases


@pytest.fixture
def saved(tmp_path, seed):
    model = _fresh_gpt2(seed)
    quantize_model(model, Int8Config(threshold=3.0))
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids).logits
    path = save_quantized(model, tmp_path / "ckpt")
    return path, ids, out


def _snapshot(model):
    return [(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    types, sd = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    now = model.state_dict()
    assert set(now) == set(sd) and all(torch.equal(now[k], sd[k]) for k in sd)
    assert not hasattr(model, "_eightbit_config")


def test_round_trip_identical_outputs(saved):
    path, ids, out = saved
    model = _fresh_gpt2(seed=12345)  # different float weights: everything must come from the checkpoint
    load_quantized(path, model)
    assert sum(isinstance(m, Linear8bitLt) for m in model.modules()) == 8
    assert model.lm_head.weight is model.transformer.wte.weight or torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    assert model._eightbit_config == Int8Config(threshold=3.0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, out)
    assert json.loads((path / CONFIG_NAME).read_text())["config"] == {"method": "llm_int8", "threshold": 3.0, "skip_modules": ["lm_head"]}


def _rewrite_weights(path, edit):
    tensors = load_file(str(path / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta["weights_bytes"] = (path / WEIGHTS_NAME).stat().st_size  # a consistent but wrong checkpoint
    (path / CONFIG_NAME).write_text(json.dumps(meta))


def _edit_config(path, **changes):
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta["config"].update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(meta))


def _truncate(path):
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _truncate_and_fix_size(path):
    _truncate(path)
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta["weights_bytes"] = (path / WEIGHTS_NAME).stat().st_size
    (path / CONFIG_NAME).write_text(json.dumps(meta))


KEY = "transformer.h.0.attn.c_attn.weight_int8"
DAMAGE = {
    "truncated": (_truncate, ValueError, "truncated"),
    "truncated_size_fixed": (_truncate_and_fix_size, ValueError, "corrupt or truncated"),
    "wrong_shape": (lambda p: _rewrite_weights(p, lambda t: t.__setitem__(KEY, t[KEY][:-1].clone())), ValueError, "shape"),
    "wrong_dtype": (lambda p: _rewrite_weights(p, lambda t: t.__setitem__(KEY, t[KEY].float())), ValueError, "dtype"),
    "missing_tensor": (lambda p: _rewrite_weights(p, lambda t: t.pop(KEY)), ValueError, "missing tensors"),
    "bad_method": (lambda p: _edit_config(p, method="llm_int4"), ValueError, "unknown quantization method"),
    "unknown_field": (lambda p: _edit_config(p, bogus=1), ValueError, "unknown field"),
    "negative_threshold": (lambda p: _edit_config(p, threshold=-2.0), ValueError, "threshold"),
    "string_threshold": (lambda p: _edit_config(p, threshold="6"), ValueError, "threshold"),
    "bad_json": (lambda p: (p / CONFIG_NAME).write_text("{not json"), ValueError, "not valid JSON"),
    "missing_weights": (lambda p: (p / WEIGHTS_NAME).unlink(), FileNotFoundError, "not found"),
    "missing_config": (lambda p: (p / CONFIG_NAME).unlink(), FileNotFoundError, "not found"),
    "missing_dir": (lambda p: shutil.rmtree(p), FileNotFoundError, "not a directory"),
    "unknown_module": (lambda p: _edit_quantized(p, ["transformer.h.9.attn.c_attn"]), ValueError, "not found"),
}


def _edit_quantized(path, names):
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta["quantized_modules"] = meta["quantized_modules"] + names
    (path / CONFIG_NAME).write_text(json.dumps(meta))


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_clear_error_model_unchanged(saved, case):
    path, _, _ = saved
    damage, exc, match = DAMAGE[case]
    damage(path)
    model = _fresh_gpt2(seed=7)
    snap = _snapshot(model)
    with pytest.raises(exc, match=match):
        load_quantized(path, model)
    _assert_unchanged(model, snap)


def test_save_requires_quantized_model(tmp_path):
    with pytest.raises(ValueError, match="no eightbit quantized layers"):
        save_quantized(_fresh_gpt2(), tmp_path / "x")
    with pytest.raises(TypeError, match="model must be"):
        load_quantized(tmp_path, "model")
