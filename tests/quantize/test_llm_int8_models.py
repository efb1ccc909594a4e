"""quantize_model(model, Int8Config()) on tiny random transformers (GPT-2 Conv1D, OPT, LLaMA, BERT) and on
the real MiniLM sentence encoder (cosine similarity of embeddings to fp32)."""
import pytest
import torch
from torch import nn

import eightbit
from eightbit import Int8Config, memory_footprint, quantize_model
from eightbit.nn import Linear8bitLt
from eightbit.quantize.base import config_from_dict
from tests.numerics import rel_error

transformers = pytest.importorskip("transformers")

H, FF, LAYERS, VOCAB = 64, 128, 2, 97


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=LAYERS, n_embd=H, n_head=2, vocab_size=VOCAB, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg), 4 * LAYERS  # c_attn, attn.c_proj, c_fc, mlp.c_proj


def _opt():
    cfg = transformers.OPTConfig(hidden_size=H, num_hidden_layers=LAYERS, ffn_dim=FF, num_attention_heads=2,
                                 vocab_size=VOCAB, max_position_embeddings=32, word_embed_proj_dim=H)
    return transformers.OPTForCausalLM(cfg), 6 * LAYERS  # q, k, v, out_proj, fc1, fc2


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg), 7 * LAYERS  # q, k, v, o, gate, up, down


def _bert():
    cfg = transformers.BertConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=FF,
                                  vocab_size=VOCAB, max_position_embeddings=32)
    return transformers.BertModel(cfg), 6 * LAYERS + 1  # q, k, v, attn out, intermediate, output; pooler


def _output(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("build", [_gpt2, _opt, _llama, _bert], ids=["gpt2", "opt", "llama", "bert"])
@torch.no_grad()
def test_tiny_models_close_to_float(seed, build):
    model, n_expected = build()
    model.eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    ref = _output(model, ids).double()
    float_linear_like = sum(1 for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    before = memory_footprint(model)
    quantize_model(model, Int8Config())
    converted = [n for n, m in model.named_modules() if isinstance(m, Linear8bitLt)]
    assert len(converted) == n_expected
    assert not any(n.endswith("lm_head") for n in converted)
    left = sum(1 for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    assert left == float_linear_like - n_expected  # only the LM head (if any) stays float
    assert memory_footprint(model) < before
    got = _output(model, ids)
    assert rel_error(ref, got) < 0.03, rel_error(ref, got)


def test_gpt2_conv1d_orientation(seed):
    """Conv1D stores its weight [in, out]; the converted layer must compute the same function."""
    model, _ = _gpt2()
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D(H -> 4H)
    x = torch.randn(3, H)
    ref = conv(x).double()
    layer = Int8Config().make_linear(eightbit.quantize.convert.as_linear(conv), "c_fc")
    assert (layer.in_features, layer.out_features) == (H, 4 * H)
    assert rel_error(ref, layer(x).detach()) < 0.015


def test_int8_config_validation_and_json():
    cfg = Int8Config(threshold=4.5, skip_modules=["lm_head", "encoder.*"])
    assert cfg.skip_modules == ("lm_head", "encoder.*")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert Int8Config.method == "llm_int8"
    with pytest.raises(ValueError, match="threshold"):
        Int8Config(threshold=-1)
    with pytest.raises(ValueError, match="threshold"):
        Int8Config(threshold=float("nan"))
    with pytest.raises(ValueError, match="skip_modules"):
        Int8Config(skip_modules="lm_head")
    from eightbit.quantize import FP8Config, Int8StaticConfig
    for make in (Int8Config, FP8Config, Int8StaticConfig):  # None or a non-sequence: a clear error, not a TypeError
        for bad in (None, 3, ("lm_head", 3), {"lm_head"}):
            with pytest.raises(ValueError, match="skip_modules"):
                make(skip_modules=bad)
        assert make(skip_modules=()).skip_modules == ()
    with pytest.raises(ValueError):
        config_from_dict({"method": "llm_int8", "threshold": "six"})


@pytest.fixture(scope="module")
def minilm_embeddings():
    from eightbit.data.sentences import eval_sentences
    from eightbit.models import embed_sentences, load_minilm

    torch.manual_seed(0)
    model, tok = load_minilm()
    sentences = eval_sentences()
    ref = embed_sentences(model, tok, sentences)
    before = memory_footprint(model)
    quantize_model(model, Int8Config())
    got = embed_sentences(model, tok, sentences)
    return ref, got, before, memory_footprint(model), model


@pytest.mark.slow
def test_minilm_cosine_to_fp32(minilm_embeddings):
    ref, got, before, after, model = minilm_embeddings
    assert ref.shape == got.shape == (240, 384)
    cos = torch.nn.functional.cosine_similarity(ref.double(), got.double(), dim=-1)
    print(f"MiniLM LLM.int8() mean cosine to fp32: {float(cos.mean()):.6f} (min {float(cos.min()):.6f})")
    assert float(cos.mean()) >= 0.999
    assert float(cos.min()) >= 0.99
    n_int8 = sum(isinstance(m, Linear8bitLt) for m in model.modules())
    assert n_int8 == 6 * 6 + 1  # 6 BERT layers x 6 linears + pooler
    print(f"MiniLM memory: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    assert after < 0.75 * before  # embeddings stay fp32; every linear drops to ~1/4


@pytest.mark.parametrize("make_config", [lambda: eightbit.Int8Config(), lambda: eightbit.FP8Config(activation="dynamic")])
def test_torch_transformer_encoder_and_multihead_attention(make_config, tmp_path):
    """torch's own nn.TransformerEncoder (and a bare nn.MultiheadAttention) quantize and run, in training mode and
    on the no-grad inference fast path: the attention's out_proj stays float (the attention reads its weight
    directly, as torch.ao leaves it), the feed-forward layers convert, and the fused fast path is not taken with
    the converted layers (it would hand their 8-bit weights to a float kernel). The outputs follow the float model."""
    import copy

    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2).eval()
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        want = enc(x)
    q = eightbit.quantize_model(copy.deepcopy(enc), make_config())
    for layer in q.layers:
        assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert type(layer.linear1).__name__ in ("Linear8bitLt", "LinearFP8")
    got_grad = q(x)  # grad enabled: the regular path
    with torch.no_grad():
        got_fast = q(x)  # no grad, eval: where the fast path would run
    for got in (got_grad, got_fast):
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.999, float(cos)
    torch.testing.assert_close(got_fast, got_grad.detach())
    # the streaming loader puts its layers in place the same way
    from safetensors.torch import save_file

    save_file(enc.state_dict(), str(tmp_path / "enc.safetensors"))
    factory = lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)  # noqa: E731
    streamed = eightbit.load_quantized_from_float(tmp_path / "enc.safetensors", factory, make_config()).eval()
    with torch.no_grad():
        torch.testing.assert_close(streamed(x), got_fast)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    qm = eightbit.quantize_model(copy.deepcopy(mha), make_config())
    assert torch.equal(qm(x, x, x)[0], mha(x, x, x)[0])  # nothing in it converts
