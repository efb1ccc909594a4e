"""`quantize_model`: replace the linear layers of any ``nn.Module`` by quantized ones, in place."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .base import QuantConfig


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D`` (a linear whose weight is stored [in, out])."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def as_linear(module: nn.Module) -> nn.Linear:
    """View an ``nn.Linear`` or a transformers ``Conv1D`` as an ``nn.Linear`` (weight [out, in]).

    For ``Conv1D`` the returned layer's weight is a transposed view of the original (no copy)."""
    if isinstance(module, nn.Linear):
        return module
    if is_conv1d(module):
        in_features, out_features = module.weight.shape
        lin = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
        lin.weight = nn.Parameter(module.weight.detach().t(), requires_grad=False)
        if module.bias is not None:
            lin.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        return lin
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


def is_linear_like(module: nn.Module) -> bool:
    """True for layers ``quantize_model`` converts (``nn.Linear`` and transformers ``Conv1D``), except the
    ``out_proj`` of ``nn.MultiheadAttention`` (torch's ``NonDynamicallyQuantizableLinear``): the attention reads
    its weight directly instead of calling it, so it stays in float (as in torch.ao's dynamic quantization)."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False
    return isinstance(module, nn.Linear) or is_conv1d(module)


def put_layer(parent: nn.Module, attr: str, layer: nn.Module) -> None:
    """Set the quantized ``layer`` as ``parent.<attr>`` (every path that converts a model puts its layers in place
    here). torch's ``nn.TransformerEncoderLayer`` is switched to its regular path, which calls its layers: its
    inference fast path would pass ``linear1``/``linear2``'s weights to a fused float kernel, and this flag is the
    one gate of that path the quantized layers cannot satisfy (kept after an undo: the same results)."""
    setattr(parent, attr, layer)
    if isinstance(parent, nn.TransformerEncoderLayer):
        parent.activation_relu_or_gelu = 0


def find_linear_layers(model: nn.Module, config: QuantConfig | None = None) -> list[str]:
    """Dotted names of the layers ``quantize_model(model, config)`` would convert (skips applied)."""
    return [
        name
        for name, m in model.named_modules()
        if is_linear_like(m) and not (config is not None and config.is_skipped(name))
    ]


def replace_layers(model: nn.Module, config: QuantConfig, names: Iterable[str]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace the named linear layers; return an undo log of (parent, attribute, original module).

    A module registered under several names (the same object used twice) is converted once and the one
    replacement is set at every place it is registered, so sharing survives conversion (and memory is not
    doubled by a float alias left behind). Raises ValueError (and changes nothing) when a name is missing or
    not a linear layer."""
    names = list(names)
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in names:
        if name == "":
            raise ValueError("the model itself is a linear layer: call config.make_linear(model, '') instead")
        if name not in modules:
            raise ValueError(f"module {name!r} not found in the model")
        if not is_linear_like(modules[name]):
            raise ValueError(f"module {name!r} is {type(modules[name]).__name__}, not nn.Linear or Conv1D")
    places: dict[int, list[str]] = {}  # id(module) -> every dotted name it is registered under
    for name, m in modules.items():
        places.setdefault(id(m), []).append(name)
    undo: list[tuple[nn.Module, str, nn.Module]] = []
    done: set[int] = set()
    try:
        for name in names:
            original = modules[name]
            if id(original) in done:
                continue
            done.add(id(original))
            new = config.make_linear(as_linear(original), name)
            for place in places[id(original)]:
                parent_name, _, attr = place.rpartition(".")
                parent = modules[parent_name]
                put_layer(parent, attr, new)
                undo.append((parent, attr, original))
    except BaseException:
        undo_replacements(undo)
        raise
    return undo


def undo_replacements(undo: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Put back the original modules recorded by ``replace_layers``."""
    for parent, attr, original in reversed(undo):
        setattr(parent, attr, original)


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig, *, modules: Iterable[str] | None = None,
                   calibration_data: Iterable | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` (and transformers ``Conv1D``) not skipped by ``config`` with its
    quantized version, in place, and return the model.

    Works for ``Int8Config`` (LLM.int8()), ``FP8Config`` and ``Int8StaticConfig``. Static activation scales
    come from ``calibration_data`` (batches as ``eightbit.calibrate`` takes them) when given; otherwise run
    ``eightbit.calibrate(model, batches)`` afterwards (the data is ignored by configs without static scales).
    ``modules`` restricts conversion to exactly these dotted names (used when loading checkpoints). A bare
    ``nn.Linear`` model returns its replacement.

    Raises TypeError for a non-module model or non-config config, ValueError for unknown ``modules``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be an eightbit QuantConfig (Int8Config, FP8Config, ...), got {type(config).__name__}")
    if is_linear_like(model):
        model = config.make_linear(as_linear(model), "")
    else:
        names = find_linear_layers(model, config) if modules is None else list(modules)
        replace_layers(model, config, names)
        record_configs(model, config, names)
    if calibration_data is not None and config.needs_calibration:
        from .calibration import calibrate

        calibrate(model, calibration_data, progress=False)
    return model


def record_configs(model: nn.Module, config: QuantConfig, names: Iterable[str]) -> None:
    """Remember which config made which layer (``model._eightbit_layer_configs``), so that a model quantized
    in several calls with different methods saves and loads every layer as what it is."""
    from ..nn.base import QuantizedLinear

    per_layer = dict(getattr(model, "_eightbit_layer_configs", {}))
    modules = dict(model.named_modules(remove_duplicate=False))
    previous = getattr(model, "_eightbit_config", None)
    if previous is not None:  # layers quantized earlier by a path that recorded one config for the whole model
        new = set(names)
        for name, m in modules.items():
            if isinstance(m, QuantizedLinear) and name not in new:
                per_layer.setdefault(name, previous)
    for name in names:
        target = modules.get(name)
        for other, m in modules.items():  # aliases of a shared layer carry the same config
            if m is target:
                per_layer[other] = config
    model._eightbit_layer_configs = per_layer
    model._eightbit_config = config


def memory_footprint(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored; tensors sharing storage count once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen: set[tuple[int, int, int]] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.device.type != "meta" else (id(t), 0, 0)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
