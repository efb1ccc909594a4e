"""Helpers for tests/quantize/test_streaming.py: a tiny test-only QuantConfig, a fast writer of big
random checkpoints, and (run as a script) the memory measurement done in a fresh process.

    python -m tests.quantize._streaming_child write DIR LAYERS          # sharded LLaMA-style fp32 checkpoint
    python -m tests.quantize._streaming_child load DIR LAYERS METHOD    # prints one JSON line of figures
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from eightbit.nn.base import QuantizedLinear
from eightbit.quantize.base import QuantConfig

_CHUNK = 1 << 20  # elements of float scratch per step


class RowInt8Linear(QuantizedLinear):
    """Test-only int8 linear: one absmax scale per output row; quantizes and multiplies in row chunks so
    that neither step holds a float copy of the whole weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "RowInt8Linear":
        w = linear.weight.detach()
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.in_features, out.out_features = linear.in_features, linear.out_features
        codes = torch.empty(w.shape, dtype=torch.int8)
        scale = torch.empty(w.shape[0])
        step = max(1, _CHUNK // max(1, w.shape[1]))
        for r in range(0, w.shape[0], step):
            rows = w[r:r + step].float()
            s = rows.abs().amax(dim=1).clamp_min(1e-12) / 127
            codes[r:r + step] = rows.div_(s[:, None]).round_().to(torch.int8)
            scale[r:r + step] = s
        out.register_buffer("weight_int8", codes)
        out.register_buffer("weight_scale", scale)
        out.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return out

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, _CHUNK // max(1, self.in_features))
        x32 = x.float()
        parts = [F.linear(x32, self.weight_int8[r:r + step].float() * self.weight_scale[r:r + step, None])
                 for r in range(0, self.out_features, step)]
        out = torch.cat(parts, dim=-1)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)


@dataclasses.dataclass
class RowInt8Config(QuantConfig):
    """Test-only config (not registered): ``RowInt8Linear`` for every linear layer not skipped."""

    method = "test_row_int8"
    skip_modules: tuple[str, ...] = ("lm_head",)

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        return RowInt8Linear.from_linear(linear)


def llama_config(layers: int):
    """LLaMA-style config: 51 MB of fp32 linear weights per layer, largest tensor 11.5 MB."""
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=layers, hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=4096, max_position_embeddings=256, tie_word_embeddings=False,
    )


def write_random_checkpoint(directory: Path, config, *, shard_bytes: int = 256 << 20, dtype=torch.float32) -> int:
    """Write a sharded safetensors checkpoint of ``config``'s model with uniform random weights, without
    ever building the float model (shapes come from a meta-device skeleton). Returns the tensor bytes."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(t.shape) for k, t in skeleton.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    for key, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype).uniform_(-0.05, 0.05)  # ~0.6 GB/s on 2 cores
        if size and size + t.numel() * t.element_size() > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= shard_bytes:
            shards.append({})
            size = 0
    shards = [s for s in shards if s]
    weight_map = {}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        tensors.clear()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def _measure(directory: Path, layers: int, method: str) -> dict:
    from eightbit.quantize.streaming import build_empty_model, demo_streaming_load, reset_peak_rss, rss_bytes

    if method == "int8":
        from eightbit.quantize.llm_int8 import Int8Config

        config = Int8Config()
    elif method == "fp8":
        from eightbit.quantize.ptq import FP8Config

        config = FP8Config()
    else:
        config = RowInt8Config()
    cfg = llama_config(layers)
    torch.set_num_threads(2)
    build_empty_model(llama_config(1))  # imports done (transformers loads modeling code lazily) ...
    config.make_linear(nn.Linear(64, 64), "warmup")  # ... and the quantizer's kernels
    model, stats = demo_streaming_load(directory, cfg, config, print_fn=None)
    largest_linear = max(m.in_features * m.out_features * 4 for m in model.modules() if isinstance(m, QuantizedLinear))
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        model(ids)  # warm-up: first-call allocations (thread pools, caches) are not the forward's working set
        reset_peak_rss()
        before = rss_bytes()[0]
        model(ids)
        forward_growth = rss_bytes()[1] - before
    return {
        "summary": stats.summary(), "checkpoint_bytes": stats.checkpoint_bytes, "footprint_bytes": stats.footprint_bytes,
        "largest_tensor_bytes": stats.largest_tensor_bytes, "peak_growth_bytes": stats.peak_rss_growth_bytes,
        "limit_bytes": stats.limit_bytes, "forward_growth_bytes": forward_growth,
        "largest_linear_fp32_bytes": largest_linear, "seconds": stats.seconds,
        "quantized_layers": stats.num_quantized_layers,
    }


if __name__ == "__main__":
    if sys.argv[1] == "write":
        print(write_random_checkpoint(Path(sys.argv[2]), llama_config(int(sys.argv[3]))))
    elif sys.argv[1] == "load":
        print(json.dumps(_measure(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
    else:
        raise SystemExit(__doc__)
