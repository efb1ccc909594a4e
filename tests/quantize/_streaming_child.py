"""Helpers for tests/quantize/test_streaming.py: a tiny test-only QuantConfig and (run as a script) the
memory measurement of eightbit.quantize.streaming_demo done in a fresh process with that config too.

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
from eightbit.quantize.streaming_demo import demo_llama_config, measure_streaming_load, write_random_checkpoint

__all__ = ["RowInt8Config", "RowInt8Linear", "llama_config", "write_random_checkpoint"]

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
    """LLaMA-style config: 51 MB of fp32 linear weights per layer, largest tensor 16.8 MB (embeddings)."""
    return demo_llama_config(layers)


def _measure(directory: Path, layers: int, method: str) -> dict:
    if method == "int8":
        from eightbit.quantize.llm_int8 import Int8Config

        config = Int8Config()
    elif method == "fp8":
        from eightbit.quantize.ptq import FP8Config

        config = FP8Config(activation="dynamic")
    else:
        config = RowInt8Config()
    torch.set_num_threads(2)
    return measure_streaming_load(directory, llama_config(layers), config)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        print(write_random_checkpoint(Path(sys.argv[2]), llama_config(int(sys.argv[3]))))
    elif sys.argv[1] == "load":
        print(json.dumps(_measure(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
    else:
        raise SystemExit(__doc__)
