"""`calibrate`: run a quantized model over sample batches to freeze its static activation scales."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def calibrating_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Dotted name -> layer for every layer of ``model`` that needs activation calibration."""
    return {name: m for name, m in model.named_modules() if getattr(m, "needs_calibration", False) is True and hasattr(m, "start_observing")}


def calibrate(model: nn.Module, batches: Iterable, *, progress: bool = True) -> nn.Module:
    """Calibrate the static activation scales of ``model`` (converted by ``quantize_model`` with an
    ``FP8Config``/``Int8StaticConfig``) and return it.

    Every such layer observes its inputs while the model runs on each item of ``batches`` under
    ``torch.no_grad()`` (a tensor is passed positionally, a Mapping such as a tokenizer's BatchEncoding as
    keyword arguments, a tuple/list as positional arguments), then its scale is frozen. A tqdm bar shows
    progress unless ``progress=False``. Raises TypeError for an unsupported batch, ValueError when
    ``batches`` is empty or the model has no layer to calibrate; layers that saw no input stay
    uncalibrated (a RuntimeWarning names them; running them raises RuntimeError).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = calibrating_layers(model)
    if not layers:
        raise ValueError("model has no layers with static activations to calibrate (quantize_model with FP8Config/Int8StaticConfig first)")
    seen = 0
    for layer in layers.values():
        layer.start_observing()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrating", disable=not progress, leave=False):
                if isinstance(batch, torch.Tensor):
                    model(batch)
                elif isinstance(batch, Mapping):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    raise TypeError(f"each batch must be a tensor, a mapping or a tuple/list, got {type(batch).__name__}")
                seen += 1
    except BaseException:
        for layer in layers.values():
            layer._observer = None  # leave the layers as they were
        raise
    if seen == 0:
        for layer in layers.values():
            layer._observer = None
        raise ValueError("batches was empty: calibration needs at least one batch")
    missed = [name for name, layer in layers.items() if not layer.finish_observing()]
    if missed:
        warnings.warn(f"{len(missed)} layer(s) saw no input during calibration and stay uncalibrated: {missed[:5]}", RuntimeWarning, stacklevel=2)
    return model
