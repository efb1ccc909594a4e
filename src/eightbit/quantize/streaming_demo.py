"""Measure a streaming load honestly: generate a big random float checkpoint, then load it with
``load_quantized_from_float`` in a fresh Python process and report the growth of its peak resident memory.

Used by ``eightbit stream-demo``, ``eightbit demo`` and the memory test. A fresh process matters: in a
long-lived one, freed memory and earlier peaks hide or inflate what the load itself costs.

    python -m eightbit.quantize.streaming_demo DIR '{"method": "llm_int8"}'   # prints one JSON line
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import QuantConfig

_VOCAB = 4096


def demo_llama_config(layers: int, hidden: int = 1024) -> Any:
    """LLaMA-style transformers config with random-weight-friendly sizes: MLP ``hidden * 11 / 4``,
    vocab 4096, untied embeddings, 64-wide heads. At ``hidden=1024``: 51 MB of fp32 linear weights per
    layer, largest tensor 16.8 MB (the embeddings)."""
    from transformers import LlamaConfig

    heads = max(1, hidden // 64)
    return LlamaConfig(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=_VOCAB, max_position_embeddings=256, tie_word_embeddings=False,
    )


def fp32_bytes(layers: int, hidden: int) -> int:
    """Bytes of the fp32 checkpoint of ``demo_llama_config(layers, hidden)``."""
    inter = hidden * 11 // 4
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return 4 * (layers * per_layer + 2 * _VOCAB * hidden + hidden)


def demo_config_for_size(size_gb: float) -> Any:
    """The ``demo_llama_config`` whose fp32 checkpoint is closest to ``size_gb`` (1e9 bytes): the widest
    of 1024/512/256/128 that gives at least 2 layers. Raises ValueError for a size <= 0."""
    if not isinstance(size_gb, (int, float)) or isinstance(size_gb, bool) or not size_gb > 0:
        raise ValueError(f"size_gb must be a number > 0, got {size_gb!r}")
    for hidden in (1024, 512, 256, 128):
        fixed, per_layer = fp32_bytes(0, hidden), fp32_bytes(1, hidden) - fp32_bytes(0, hidden)
        layers = round((size_gb * 1e9 - fixed) / per_layer)
        if layers >= 2 or hidden == 128:
            return demo_llama_config(max(1, layers), hidden)
    raise AssertionError("unreachable")


def write_random_checkpoint(directory: str | os.PathLike, config: Any, *, shard_bytes: int = 256 << 20,
                            dtype: torch.dtype = torch.float32) -> int:
    """Write a sharded safetensors checkpoint (``model.safetensors.index.json`` + shards) and ``config.json``
    of ``config``'s causal LM with uniform random weights in [-0.05, 0.05], one tensor in memory at a time
    (shapes come from a meta-device skeleton; the float model is never built). Returns the tensor bytes."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(t.shape) for k, t in skeleton.state_dict().items()}
    del skeleton
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    # group names into shards first, then write each shard: only one shard's tensors are alive at a time
    groups: list[list[str]] = [[]]
    size = total = 0
    for key, shape in shapes.items():
        n = dtype.itemsize
        for s in shape:
            n *= s
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += n
        total += n
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: torch.empty(shapes[k], dtype=dtype).uniform_(-0.05, 0.05) for k in keys}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def measure_streaming_load(directory: str | os.PathLike, model_config: Any, config: QuantConfig, *,
                           forward: bool = True) -> dict[str, Any]:
    """Load ``directory`` with ``demo_streaming_load`` in *this* process (call it in a fresh one) and return
    the figures as a JSON-safe dict: ``summary``, ``checkpoint_bytes``, ``footprint_bytes``,
    ``largest_tensor_bytes``, ``peak_growth_bytes`` (None where /proc is unavailable), ``limit_bytes``,
    ``quantized_layers``, ``seconds``, ``largest_linear_fp32_bytes`` and ``forward_growth_bytes`` (peak
    growth of a second 8-token forward pass; None when ``forward`` is False or the config needs calibration).
    Imports, the modeling code and the quantizer's kernels are warmed up before the "before" figure."""
    from ..nn.base import QuantizedLinear
    from .streaming import build_empty_model, demo_streaming_load, reset_peak_rss, rss_bytes

    small = copy.deepcopy(model_config)
    if hasattr(small, "num_hidden_layers"):
        small.num_hidden_layers = 1
    build_empty_model(small)  # imports done (transformers loads modeling code lazily) ...
    config.make_linear(nn.Linear(64, 64), "warmup")  # ... and the quantizer's kernels
    del small
    model, stats = demo_streaming_load(directory, model_config, config, print_fn=None)
    linears = [m.in_features * m.out_features * 4 for m in model.modules() if isinstance(m, QuantizedLinear)]
    forward_growth = None
    if forward and not config.needs_calibration:
        ids = torch.randint(0, model_config.vocab_size, (1, 8))
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
        "largest_linear_fp32_bytes": max(linears, default=0), "seconds": stats.seconds,
        "quantized_layers": stats.num_quantized_layers,
    }


def measure_in_subprocess(directory: str | os.PathLike, config: QuantConfig, *, forward: bool = True,
                          timeout: float = 600.0) -> dict[str, Any]:
    """Run ``measure_streaming_load`` on ``directory`` (which must hold ``config.json``) in a fresh Python
    process with 2 threads and return its dict. ``config`` must be a registered config (it travels as
    ``to_dict()`` JSON). Raises RuntimeError with the child's last error line when it fails."""
    if not (Path(directory) / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no config.json (write it with write_random_checkpoint)")
    args = [sys.executable, "-m", __name__, str(directory), json.dumps(config.to_dict())]
    if not forward:
        args.append("--no-forward")
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the measuring process failed (exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_streaming_demo(size_gb: float, config: QuantConfig, directory: str | os.PathLike | None = None, *,
                       forward: bool = True, timeout: float = 600.0) -> dict[str, Any]:
    """Write a random fp32 checkpoint of about ``size_gb`` GB (``demo_config_for_size``) to ``directory``
    (default: a temporary directory, removed afterwards; a given one is kept) and measure its streaming
    load into ``config`` in a fresh process (``measure_in_subprocess``). Returns that dict plus ``layers``,
    ``hidden`` and ``directory`` (None when temporary)."""
    import tempfile

    model_config = demo_config_for_size(size_gb)
    with tempfile.TemporaryDirectory(prefix="eightbit-stream-") as tmp:
        where = Path(directory) if directory is not None else Path(tmp)
        write_random_checkpoint(where, model_config)
        result = measure_in_subprocess(where, config, forward=forward, timeout=timeout)
    result.update(layers=model_config.num_hidden_layers, hidden=model_config.hidden_size,
                  directory=None if directory is None else str(directory))
    return result


def _main(argv: list[str]) -> None:
    from transformers import AutoConfig

    from .base import config_from_dict

    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    directory, config = Path(argv[0]), config_from_dict(json.loads(argv[1]))
    model_config = AutoConfig.from_pretrained(directory)
    print(json.dumps(measure_streaming_load(directory, model_config, config, forward="--no-forward" not in argv)))


if __name__ == "__main__":
    _main(sys.argv[1:])
