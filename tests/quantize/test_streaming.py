"""Streaming load of float checkpoints straight into 8-bit (eightbit.load_quantized_from_float)."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import eightbit
from eightbit.quantize.base import QuantConfig
from eightbit.quantize.convert import quantize_model
from eightbit.quantize.streaming import checkpoint_entries, demo_streaming_load, read_header, read_tensor
from tests.quantize._streaming_child import RowInt8Config, RowInt8Linear, write_random_checkpoint

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModel, AutoModelForCausalLM, GPT2Config, LlamaConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore", message=".*token_id.*")


def gpt2_config() -> GPT2Config:
    return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0)


def llama_config(tie: bool = False) -> LlamaConfig:
    return LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=tie)


def float_model(cfg, seed: int, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norms/biases so a wrong assignment shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype) if dtype != torch.float32 else model


def assert_same_state(loaded: nn.Module, reference: nn.Module) -> None:
    a, b = loaded.state_dict(), reference.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ equivalence
def test_gpt2_conv1d_tied_matches_quantize_model(tmp_path, seed):
    cfg = gpt2_config()
    ref = float_model(cfg, seed)
    ref.save_pretrained(tmp_path)
    model = eightbit.load_quantized_from_float(tmp_path, cfg, RowInt8Config())
    quantize_model(ref, RowInt8Config())
    assert isinstance(model.transformer.h[0].attn.c_attn, RowInt8Linear)  # Conv1D [in, out] handled
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, skipped, loaded once
    assert model._eightbit_config == RowInt8Config()
    assert_same_state(model, ref)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    assert torch.equal(model(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_llama_sharded_matches_quantize_model(tmp_path, seed, dtype):
    cfg = llama_config()
    ref = float_model(cfg, seed, dtype)
    ref.save_pretrained(tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = eightbit.load_quantized_from_float(tmp_path, cfg, RowInt8Config())
    quantize_model(ref, RowInt8Config())
    assert_same_state(model, ref)
    # non-persistent rotary buffers are recomputed (in float32, as transformers builds them)
    fresh = AutoModelForCausalLM.from_config(cfg)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)
    assert model.lm_head.weight.dtype == dtype and not isinstance(model.lm_head, RowInt8Linear)


def test_keep_non_linear_dtype_bf16(tmp_path, seed):
    cfg = llama_config()
    ref = float_model(cfg, seed)
    ref.save_pretrained(tmp_path)
    model = eightbit.load_quantized_from_float(tmp_path, cfg, RowInt8Config(), keep_non_linear_dtype=torch.bfloat16)
    q = quantize_model(copy.deepcopy(ref), RowInt8Config())
    layer = model.model.layers[1]
    assert layer.input_layernorm.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight.bfloat16())
    # quantized from the fp32 checkpoint tensor, not from a bf16 copy
    assert torch.equal(layer.mlp.up_proj.weight_int8, q.model.layers[1].mlp.up_proj.weight_int8)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_prefix_added_and_stripped(tmp_path, seed):
    cfg = gpt2_config()
    ref = float_model(cfg, seed)
    ref.transformer.save_pretrained(tmp_path / "base")  # keys without "transformer."
    # (save_pretrained wrote architectures=["GPT2Model"] into the shared cfg: a config naming no class builds the
    # causal LM, whose keys carry the prefix the checkpoint lacks)
    model = eightbit.load_quantized_from_float(tmp_path / "base", gpt2_config(), RowInt8Config())
    assert_same_state(model, quantize_model(copy.deepcopy(ref), RowInt8Config()))
    ref.save_pretrained(tmp_path / "lm")  # keys with "transformer.", loaded into the bare GPT2Model
    base = eightbit.load_quantized_from_float(tmp_path / "lm", lambda: AutoModel.from_config(cfg), RowInt8Config())
    assert_same_state(base, quantize_model(copy.deepcopy(ref.transformer), RowInt8Config()))


@dataclasses.dataclass
class KeepFloatConfig(QuantConfig):
    """A "quantizer" that keeps the float layer it is given: the loader must not hand that layer's weight, read
    into its reused scratch buffer, to the next weight."""

    method: ClassVar[str] = "keep_float_test"

    skip_modules: tuple[str, ...] = ("lm_head",)

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias  # the very tensors it was given
        return new


def test_scratch_buffer_never_shared_by_kept_weights(tmp_path, seed):
    cfg = llama_config()  # nn.Linear layers, no bias: every weight completes its layer when it is read
    ref = float_model(cfg, seed)
    ref.save_pretrained(tmp_path)
    model = eightbit.load_quantized_from_float(tmp_path, cfg, KeepFloatConfig())
    assert_same_state(model, quantize_model(copy.deepcopy(ref), KeepFloatConfig()))


class Toy(nn.Module):
    """Plain module: a persistent buffer, a non-persistent buffer computed in __init__, a shared linear."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12, bias=False)
        self.again = self.up  # the same module under two names is quantized once
        self.norm = nn.LayerNorm(12)
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("freq", 1.0 / 10 ** torch.arange(4, dtype=torch.float32), persistent=False)

    def forward(self, x):
        return self.norm(self.down(torch.relu(self.again(x))))


def test_plain_factory_params_never_allocated(tmp_path, seed):
    ref = Toy()
    ref.steps.fill_(7)
    sd = {k: v for k, v in ref.state_dict().items() if k != "again.weight" and k != "again.bias"}
    save_file(sd, str(tmp_path / "toy.safetensors"))
    built = []

    def factory():
        m = Toy()
        built.append([p.device.type for p in m.parameters()])
        return m

    model = eightbit.load_quantized_from_float(tmp_path / "toy.safetensors", factory, RowInt8Config())
    assert set(built[0]) == {"meta"}
    assert model.up is model.again and isinstance(model.up, RowInt8Linear)
    assert model.steps.tolist() == [7, 7, 7] and torch.equal(model.freq, Toy().freq)
    x = torch.randn(5, 12)
    quantize_model(ref, RowInt8Config())
    ref.again = ref.up  # quantize_model walks deduplicated modules and leaves the second name in float
    assert torch.equal(model(x), ref(x))


def test_meta_built_transformers_model_recomputes_rotary(tmp_path, seed):
    cfg = llama_config(tie=True)
    float_model(cfg, seed).save_pretrained(tmp_path)

    def factory():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)

    model = eightbit.load_quantized_from_float(tmp_path, factory, RowInt8Config())
    fresh = AutoModelForCausalLM.from_config(cfg)
    assert torch.equal(model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_meta_buffer_of_plain_module_is_an_error(tmp_path):
    ref = Toy()
    save_file({k: v for k, v in ref.state_dict().items() if not k.startswith("again")}, str(tmp_path / "t.safetensors"))

    def factory():
        with torch.device("meta"):
            return Toy()

    with pytest.raises(ValueError, match="buffer 'freq'"):
        eightbit.load_quantized_from_float(tmp_path / "t.safetensors", factory, RowInt8Config())


# ------------------------------------------------------------------------------------------ other configs
def _configs():
    out = []
    try:
        from eightbit.quantize.llm_int8 import Int8Config

        out.append(Int8Config())
    except ImportError:
        pass
    try:
        from eightbit.quantize.ptq import FP8Config, Int8StaticConfig

        out += [FP8Config(), Int8StaticConfig()]
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("config", _configs(), ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_library_configs_match_quantize_model(tmp_path, seed, config, arch):
    cfg = gpt2_config() if arch == "gpt2" else llama_config()
    ref = float_model(cfg, seed)
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    model = eightbit.load_quantized_from_float(tmp_path, cfg, config)
    quantize_model(ref, config)
    assert model._eightbit_config is config
    assert_same_state(model, ref)
    if not type(config).needs_calibration:
        ids = torch.randint(0, cfg.vocab_size, (2, 7))
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_encoder_checkpoint_builds_the_class_its_config_names(tmp_path):
    """A config read from a checkpoint names its class (``architectures``): the real MiniLM, a BERT encoder saved
    as ``BertModel``, loads as one (before, a causal-LM head was built around it and its names did not match, a
    ValueError); equal to quantizing the float model. A config naming no class transformers knows falls back to
    the causal LM."""
    from transformers import AutoConfig

    from eightbit.models import load_minilm
    from eightbit.models.minilm import minilm_path
    from eightbit.quantize import Int8Config

    cfg = AutoConfig.from_pretrained(minilm_path())
    assert cfg.architectures == ["BertModel"]
    model = eightbit.load_quantized_from_float(minilm_path(), cfg, Int8Config())
    ref, tok = load_minilm()
    quantize_model(ref, Int8Config())
    assert type(model).__name__ == "BertModel"
    assert_same_state(model, ref)
    batch = tok(["a sentence to embed", "another"], return_tensors="pt", padding=True)
    assert torch.equal(model(**batch).last_hidden_state, ref(**batch).last_hidden_state)
    gpt = gpt2_config()
    gpt.architectures = ["NoSuchModelClass"]
    float_model(gpt2_config(), 0).save_pretrained(tmp_path)
    assert type(eightbit.load_quantized_from_float(tmp_path, gpt, RowInt8Config())).__name__ == "GPT2LMHeadModel"


# ------------------------------------------------------------------------------------------ reader
def test_reader_matches_safetensors(tmp_path, gen):
    tensors = {
        "f32": torch.randn(3, 5, generator=gen), "f16": torch.randn(7, generator=gen).half(),
        "bf16": torch.randn(2, 2, 3, generator=gen).bfloat16(), "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]), "fp8": torch.randn(4, generator=gen).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "u8": torch.arange(9, dtype=torch.uint8),
    }
    file = tmp_path / "x.safetensors"
    save_file(tensors, str(file))
    ref = load_file(str(file))
    with open(file, "rb", buffering=0) as fh:
        got = {e.name: read_tensor(fh, e) for e in read_header(file)}
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), ref[k].reshape(-1).view(torch.uint8)), k


# ------------------------------------------------------------------------------------------ errors
@pytest.fixture
def saved_llama(tmp_path, seed):
    cfg = llama_config()
    float_model(cfg, seed).save_pretrained(tmp_path, max_shard_size="30KB")
    return tmp_path, cfg


def _rewrite(directory: Path, key: str, change) -> Path:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = directory / index["weight_map"][key]
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return shard


def test_missing_tensor(saved_llama):
    d, cfg = saved_llama
    key = "model.layers.1.mlp.up_proj.weight"
    _rewrite(d, key, lambda t: t.pop(key))
    with pytest.raises(ValueError, match=r"lists tensor 'model\.layers\.1\.mlp\.up_proj\.weight' in .*model-"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())
    index = json.loads((d / "model.safetensors.index.json").read_text())
    del index["weight_map"][key]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'.*" + str(d.name)):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())


def test_unexpected_tensor(saved_llama):
    d, cfg = saved_llama
    key = "model.norm.weight"
    shard = _rewrite(d, key, lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.extra.weight"] = shard.name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"unexpected tensor 'model\.extra\.weight' in .*{shard.name}"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())


def test_old_persistent_buffers_are_ignored(saved_llama):
    d, cfg = saved_llama
    key = "model.norm.weight"
    shard = _rewrite(d, key, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = shard.name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    model = eightbit.load_quantized_from_float(d, cfg, RowInt8Config())
    assert torch.equal(model.model.rotary_emb.inv_freq, AutoModelForCausalLM.from_config(cfg).model.rotary_emb.inv_freq)


def test_shape_mismatch(saved_llama):
    d, cfg = saved_llama
    key = "model.layers.0.self_attn.q_proj.weight"
    shard = _rewrite(d, key, lambda t: t.update({key: t[key][:-1].contiguous()}))
    with pytest.raises(ValueError, match=rf"'{key}' in .*{shard.name} has shape \(63, 64\).*\(64, 64\)"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())


def test_dtype_mismatch(saved_llama):
    d, cfg = saved_llama
    key = "model.layers.0.self_attn.q_proj.weight"
    shard = _rewrite(d, key, lambda t: t.update({key: t[key].to(torch.int8)}))
    with pytest.raises(ValueError, match=rf"'{key}' in .*{shard.name} has dtype torch.int8"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())


def test_truncated_and_missing_shard(saved_llama):
    d, cfg = saved_llama
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = d / sorted(set(index["weight_map"].values()))[-2]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=rf"{shard.name} is truncated: tensor '.+'"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())
    shard.write_bytes(data[:5])
    with pytest.raises(ValueError, match=rf"{shard.name} is truncated"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard .*{shard.name} \(holding tensor '.+'"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config())


def test_bad_arguments(tmp_path, saved_llama):
    d, cfg = saved_llama
    with pytest.raises(FileNotFoundError, match="nowhere"):
        eightbit.load_quantized_from_float(tmp_path / "nowhere", cfg, RowInt8Config())
    with pytest.raises(FileNotFoundError, match="neither"):
        (tmp_path / "empty").mkdir()
        eightbit.load_quantized_from_float(tmp_path / "empty", cfg, RowInt8Config())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="weight_map"):
        eightbit.load_quantized_from_float(tmp_path / "bad.json", cfg, RowInt8Config())
    with pytest.raises(TypeError, match="config must be"):
        eightbit.load_quantized_from_float(d, cfg, {"method": "llm_int8"})
    with pytest.raises(TypeError, match="model_factory_or_config"):
        eightbit.load_quantized_from_float(d, "llama", RowInt8Config())
    with pytest.raises(TypeError, match="must return an nn.Module"):
        eightbit.load_quantized_from_float(d, lambda: 3, RowInt8Config())
    with pytest.raises(ValueError, match="keep_non_linear_dtype"):
        eightbit.load_quantized_from_float(d, cfg, RowInt8Config(), keep_non_linear_dtype=torch.int8)


def test_demo_prints_summary(saved_llama):
    d, cfg = saved_llama
    lines = []
    model, stats = demo_streaming_load(d, cfg, RowInt8Config(), print_fn=lines.append)
    assert lines[0].startswith("loaded 0.00 GB of fp32 weights with a peak of ")
    assert stats.checkpoint_bytes == sum(e.nbytes for e in checkpoint_entries(d))
    assert stats.num_quantized_layers == 14 and stats.footprint_bytes == eightbit.memory_footprint(model)


def test_demo_config_for_size_and_writer(tmp_path):
    from eightbit.quantize.streaming_demo import demo_config_for_size, fp32_bytes

    for size_gb, hidden in ((1.5, 1024), (0.3, 1024), (0.05, 512), (0.02, 256), (0.001, 128)):
        cfg = demo_config_for_size(size_gb)
        assert cfg.hidden_size == hidden, size_gb
        if size_gb >= 0.02:
            assert abs(fp32_bytes(cfg.num_hidden_layers, hidden) / 1e9 - size_gb) <= 0.55 * (fp32_bytes(1, hidden) - fp32_bytes(0, hidden)) / 1e9
    with pytest.raises(ValueError, match="size_gb"):
        demo_config_for_size(0)
    cfg = demo_config_for_size(0.005)
    total = write_random_checkpoint(tmp_path, cfg, shard_bytes=1 << 20)
    entries = checkpoint_entries(tmp_path)
    assert total == fp32_bytes(cfg.num_hidden_layers, cfg.hidden_size) == sum(e.nbytes for e in entries)
    assert len({e.file for e in entries}) > 1 and (tmp_path / "config.json").is_file()
    assert {e.name for e in entries} == set(AutoModelForCausalLM.from_config(cfg).state_dict())


@pytest.mark.parametrize("make", [eightbit.FP8Config, eightbit.Int8Config], ids=["fp8_static", "int8"])
def test_measure_streaming_load_in_process(tmp_path, make):
    from eightbit.quantize.streaming_demo import demo_config_for_size, measure_streaming_load

    cfg = demo_config_for_size(0.003)
    write_random_checkpoint(tmp_path, cfg)
    config = make()
    r = measure_streaming_load(tmp_path, cfg, config)
    assert r["quantized_layers"] == 7 * cfg.num_hidden_layers and r["checkpoint_bytes"] == sum(e.nbytes for e in checkpoint_entries(tmp_path))
    assert r["peak_growth_bytes"] is not None and r["peak_growth_bytes"] <= r["limit_bytes"]
    # static activations cannot run before calibration: no forward measurement then
    assert (r["forward_growth_bytes"] is None) == config.needs_calibration
    assert r["summary"].startswith("loaded 0.00 GB of fp32 weights with a peak of ") and "bound 0.07 GB)" in r["summary"]


# ------------------------------------------------------------------------------------------ memory
def _child(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "tests.quantize._streaming_child", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_peak_memory_of_a_1_5_gb_checkpoint(tmp_path):
    layers = 30  # 1.58 GB of fp32 tensors, 93% in linear weights, in 7 shards
    ckpt = tmp_path / "ckpt"
    try:
        from tests.quantize._streaming_child import llama_config as big_config

        total = write_random_checkpoint(ckpt, big_config(layers))
        assert total >= 1.5e9
        method = "int8" if _configs() else "row"
        r = json.loads(_child("load", str(ckpt), str(layers), method))
    finally:
        for f in ckpt.glob("*"):
            f.unlink()
    print(r["summary"], f"peak growth {r['peak_growth_bytes'] / 1e9:.3f} GB, limit {r['limit_bytes'] / 1e9:.3f} GB, "
          f"forward growth {r['forward_growth_bytes'] / 1e6:.1f} MB, load {r['seconds']:.1f} s")
    assert r["checkpoint_bytes"] == total and r["quantized_layers"] == 7 * layers
    assert r["peak_growth_bytes"] <= r["limit_bytes"], r
    # a forward pass on 8 tokens must not materialize a float copy of a whole weight matrix
    assert r["forward_growth_bytes"] < r["largest_linear_fp32_bytes"], r
