"""Save and load quantized models: safetensors weights plus a JSON config, no pickle anywhere.

Layout of a checkpoint directory::

    model.safetensors     every parameter and buffer of the quantized model (int8/uint8/fp8 codes, scales)
    eightbit_config.json  the quantized layers grouped by the config that made them (a model may mix
                          methods: ``quantize_model`` called twice), tensor aliases, file size

Loading re-creates the quantized layers in a freshly built float model (or one built on the meta device:
its tensors are then materialized from the checkpoint), then copies the tensors. Every check (config, file
integrity, names, shapes, dtypes) runs before the model is changed; on any error the model is left exactly as
it was. Checkpoints of format version 1 (one config for all layers) still load.
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
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the eightbit quantized layers inside ``model``."""
    from ..nn.base import QuantizedLinear

    return [name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]


def layer_groups(model: nn.Module) -> list[tuple[QuantConfig, list[str]]]:
    """The quantized layers of ``model`` grouped by the config that made each (in model order). Raises
    ValueError when a quantized layer has no recorded config (it was not made by ``quantize_model``)."""
    layers = quantized_layer_names(model)
    per_layer = getattr(model, "_eightbit_layer_configs", {})
    default = getattr(model, "_eightbit_config", None)
    groups: dict[str, tuple[QuantConfig, list[str]]] = {}
    for name in layers:
        config = per_layer.get(name, default)
        if config is None:
            raise ValueError(f"quantized layer {name!r} has no recorded config: convert layers with "
                             "eightbit.quantize_model(model, config) so that the checkpoint can rebuild them")
        key = json.dumps(config.to_dict(), sort_keys=True)
        groups.setdefault(key, (config, []))[1].append(name)
    return list(groups.values())


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (converted by ``quantize_model`` and, if needed, calibrated) to directory ``path``.

    Every quantized layer is saved with the config that made it, so a model quantized partly with one method
    and partly with another loads back as it was. Returns the directory. Raises ValueError if the model holds
    no eightbit quantized layers, or a layer whose config is unknown."""
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = quantized_layer_names(model)
    if not layers:
        raise ValueError("model has no eightbit quantized layers: call eightbit.quantize_model(model, config) first")
    groups = layer_groups(model)
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
    primary = groups[0][0] if len(groups) == 1 else (getattr(model, "_eightbit_config", None) or groups[-1][0])
    meta = {
        "format": "eightbit",
        # one config: the version-1 layout (readable by earlier eightbit); several: version 2 adds "groups"
        "format_version": 1 if len(groups) == 1 else FORMAT_VERSION,
        "eightbit_version": __version__,
        "config": primary.to_dict(),
        **({"groups": [{"config": cfg.to_dict(), "modules": names} for cfg, names in groups]} if len(groups) > 1 else {}),
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
    except (ValueError, RecursionError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{cfg_file} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != "eightbit":
        raise ValueError(f"{cfg_file} is not an eightbit checkpoint config (missing format='eightbit')")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{cfg_file}: unsupported format_version {meta.get('format_version')!r}, expected one of "
                         f"{READABLE_VERSIONS}")
    layers = meta.get("quantized_modules")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{cfg_file}: 'quantized_modules' must be a list of module names")
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(f"{cfg_file}: 'aliases' must map tensor names to tensor names")
    if meta.get("weights_file") != WEIGHTS_NAME or not isinstance(meta.get("weights_bytes"), int):
        raise ValueError(f"{cfg_file}: 'weights_file' must be {WEIGHTS_NAME!r} with an integer 'weights_bytes'")
    config = config_from_dict(meta.get("config"))
    if meta["format_version"] == 1 and "groups" in meta:
        raise ValueError(f"{cfg_file}: 'groups' needs format_version 2")
    groups = meta.get("groups", [{"config": meta.get("config"), "modules": layers}])
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("modules"), list) for g in groups):
        raise ValueError(f"{cfg_file}: 'groups' must be a list of {{'config', 'modules'}} objects")
    parsed = [(config_from_dict(g.get("config")), g["modules"]) for g in groups]
    grouped = [n for _, names in parsed for n in names]
    if sorted(grouped) != sorted(layers) or not all(isinstance(n, str) for n in grouped):
        raise ValueError(f"{cfg_file}: 'groups' must list exactly the 'quantized_modules', each once")
    meta["groups"] = parsed
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

    undo: list = []
    try:
        for group_config, names in meta["groups"]:
            undo += replace_layers(model, group_config, names)
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
        on_meta = [n for n, t in [*model.named_parameters(remove_duplicate=False),
                                  *model.named_buffers(remove_duplicate=False)] if t.is_meta]
        if on_meta:
            # a model built on the meta device: its tensors come from the checkpoint (assigned, not copied into
            # meta storage, which would keep nothing); a meta tensor the checkpoint does not hold cannot be
            # materialized, so refuse before anything changes
            unfilled = [n for n in on_meta if n not in tensors]
            if unfilled:
                raise ValueError(f"model has meta tensors the checkpoint {path} does not hold: {unfilled[:5]}"
                                 f"{'...' if len(unfilled) > 5 else ''}; build the model on a real device or "
                                 "materialize those (non-persistent) buffers first")
            model.load_state_dict(tensors, strict=True, assign=True)
        else:
            model.load_state_dict(tensors, strict=True)
    except BaseException:
        undo_replacements(undo)
        raise
    from .convert import record_configs

    model._eightbit_config = None  # the groups below are the whole truth about this model
    model._eightbit_layer_configs = {}
    for group_config, names in meta["groups"]:
        record_configs(model, group_config, names)
    model._eightbit_config = config
    return model
