"""Save and load quantized models: safetensors weights plus a JSON config, no pickle anywhere.

Layout of a checkpoint directory::

    model.safetensors     every parameter and buffer of the quantized model (int8/uint8/fp8 codes, scales)
    eightbit_config.json  method config, the list of quantized layers, tensor aliases, file size

Loading re-creates the quantized layers in a freshly built float model, then copies the tensors. Every
check (config, file integrity, names, shapes, dtypes) runs before the model is changed; on any error
the model is left exactly as it was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .base import QuantConfig, config_from_dict
from .convert import replace_layers, undo_replacements

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "eightbit_config.json"
FORMAT_VERSION = 1


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the eightbit quantized layers inside ``model``."""
    from ..nn.base import QuantizedLinear

    return [name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (converted by ``quantize_model`` and, if needed, calibrated) to directory ``path``.

    Returns the directory. Raises ValueError if the model holds no eightbit quantized layers."""
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "_eightbit_config", None)
    layers = quantized_layer_names(model)
    if config is None or not layers:
        raise ValueError("model has no eightbit quantized layers: call eightbit.quantize_model(model, config) first")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ident in seen:  # tied weights: store once, record the alias
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous().cpu()
    weights = out / WEIGHTS_NAME
    save_file(tensors, str(weights), metadata={"format": "pt", "eightbit_version": __version__})
    meta = {
        "format": "eightbit",
        "format_version": FORMAT_VERSION,
        "eightbit_version": __version__,
        "config": config.to_dict(),
        "quantized_modules": layers,
        "aliases": aliases,
        "weights_file": WEIGHTS_NAME,
        "weights_bytes": weights.stat().st_size,
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out


def read_checkpoint_meta(path: str | os.PathLike) -> tuple[dict[str, Any], QuantConfig]:
    """Read and validate ``eightbit_config.json`` in ``path``; returns (metadata, config).

    Raises FileNotFoundError when files are missing and ValueError on any malformed field."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory holding an eightbit checkpoint")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: not an eightbit checkpoint")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "eightbit":
        raise ValueError(f"{cfg_file} is not an eightbit checkpoint config (missing format='eightbit')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_file}: unsupported format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    layers = meta.get("quantized_modules")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{cfg_file}: 'quantized_modules' must be a list of module names")
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(f"{cfg_file}: 'aliases' must map tensor names to tensor names")
    if meta.get("weights_file") != WEIGHTS_NAME or not isinstance(meta.get("weights_bytes"), int):
        raise ValueError(f"{cfg_file}: 'weights_file' must be {WEIGHTS_NAME!r} with an integer 'weights_bytes'")
    config = config_from_dict(meta.get("config"))
    return meta, config


def _read_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    size = weights.stat().st_size
    if size != meta["weights_bytes"]:
        raise ValueError(f"{weights} is {size} bytes but the checkpoint recorded {meta['weights_bytes']}: truncated or replaced")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{weights} is corrupt or truncated: {e}") from e


@torch.no_grad()
def load_quantized(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a checkpoint written by ``save_quantized`` into ``model``, a freshly built float model of the
    same architecture; its linear layers are replaced by the saved quantized layers. Returns the model.

    Raises FileNotFoundError/ValueError (a truncated file, a wrong shape or dtype, a config that does not
    match the model) and then leaves ``model`` untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    meta, config = read_checkpoint_meta(path)
    tensors = _read_tensors(path, meta)
    for alias, target in meta["aliases"].items():
        if target not in tensors:
            raise ValueError(f"{path / CONFIG_NAME}: alias {alias!r} points to missing tensor {target!r}")
        tensors[alias] = tensors[target]

    undo = replace_layers(model, config, meta["quantized_modules"])
    try:
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not match the model: missing tensors {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for key, ref in expected.items():
            got = tensors[key]
            if tuple(got.shape) != tuple(ref.shape):
                raise ValueError(f"tensor {key!r} in {path}: shape {tuple(got.shape)}, model expects {tuple(ref.shape)}")
            if got.dtype != ref.dtype:
                raise ValueError(f"tensor {key!r} in {path}: dtype {got.dtype}, model expects {ref.dtype}")
        model.load_state_dict(tensors, strict=True)
    except BaseException:
        undo_replacements(undo)
        raise
    model._eightbit_config = config
    return model
