"""QuantConfig plumbing: name matching, JSON round trip, registry errors, generic conversion and footprint."""
import dataclasses

import pytest
import torch
from torch import nn

from eightbit.quantize.base import QuantConfig, config_from_dict, matches_any, register_config
from eightbit.quantize.convert import find_linear_layers, memory_footprint, quantize_model


class _Halved(nn.Module):
    """A stand-in quantized layer: stores the weight in fp16 (enough to test the plumbing)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("w", linear.weight.detach().half().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return nn.functional.linear(x, self.w.float(), self.bias)


@register_config
@dataclasses.dataclass
class _HalfConfig(QuantConfig):
    method = "test_half"
    skip_modules: tuple = ("lm_head",)
    dtype: torch.dtype = torch.float16

    def make_linear(self, linear, name):
        return _Halved(linear)


@pytest.mark.parametrize(
    "name,patterns,expected",
    [
        ("lm_head", ("lm_head",), True),
        ("model.lm_head", ("lm_head",), True),
        ("model.lm_head_extra", ("lm_head",), False),
        ("encoder.layer.0.attention.query", ("encoder.layer.0.*",), True),
        ("encoder.layer.1.attention.query", ("encoder.layer.0.*",), False),
        ("encoder.layer.1.attention.query", ("*.query",), True),
        ("encoder.layer.1.attention.query", (), False),
        # a pattern naming a parent covers the layers under it (transformers' llm_int8_skip_modules), whole
        # components only
        ("model.vision_tower.encoder.layers.0.q_proj", ("vision_tower",), True),
        ("model.layers.0.mlp.up_proj", ("mlp",), True),
        ("model.layers.0.xmlp.up_proj", ("mlp",), False),
        ("model.layers.0.mlp_gate", ("mlp",), False),
        ("model.layers.3.mlp.up_proj", ("layers.0",), False),
        ("model.layers.0.mlp.up_proj", ("layers.0",), True),
    ],
)
def test_matches_any(name, patterns, expected):
    assert matches_any(name, patterns) is expected


def test_config_json_round_trip():
    cfg = _HalfConfig(skip_modules=("a", "b.*"), dtype=torch.bfloat16)
    d = cfg.to_dict()
    assert d == {"method": "test_half", "skip_modules": ["a", "b.*"], "dtype": "dtype:bfloat16"}
    assert config_from_dict(d) == cfg


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"method": "nope"}, "unknown quantization method"),
        ({"skip_modules": []}, "string 'method'"),
        ({"method": "test_half", "bogus": 1}, "unknown field"),
        ({"method": "test_half", "dtype": "dtype:notatype"}, "unknown dtype"),
        ([1, 2], "string 'method'"),
    ],
)
def test_config_from_dict_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(bad)


def _mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4)))


def test_quantize_model_generic_and_skips(seed):
    model = _mlp()
    x = torch.randn(3, 8)
    ref = model(x)
    assert find_linear_layers(model) == ["0", "2.0"]
    quantize_model(model, _HalfConfig(skip_modules=("2.*",)))
    assert isinstance(model[0], _Halved) and isinstance(model[2][0], nn.Linear)
    torch.testing.assert_close(model(x), ref, atol=1e-2, rtol=1e-2)
    assert isinstance(model._eightbit_config, _HalfConfig)


def test_quantize_model_errors():
    with pytest.raises(TypeError, match="model must be"):
        quantize_model("not a model", _HalfConfig())
    with pytest.raises(TypeError, match="config must be"):
        quantize_model(_mlp(), {"method": "llm_int8"})
    model = _mlp()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="not found"):
        quantize_model(model, _HalfConfig(), modules=["0", "nope"])
    with pytest.raises(ValueError, match="not nn.Linear"):
        quantize_model(model, _HalfConfig(), modules=["1"])
    assert [type(m) for m in model.modules()] == before  # nothing replaced on error


def test_bare_linear_returns_replacement():
    lin = nn.Linear(4, 3)
    assert isinstance(quantize_model(lin, _HalfConfig()), _Halved)


def test_memory_footprint_counts_tied_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert memory_footprint(model) == 10 * 4 * 4
    model.register_buffer("scale", torch.ones(3, dtype=torch.float16))
    assert memory_footprint(model) == 10 * 4 * 4 + 3 * 2
    with pytest.raises(TypeError):
        memory_footprint(3)
