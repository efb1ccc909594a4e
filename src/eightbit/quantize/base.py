"""`QuantConfig`: the small dataclass every quantization method is configured with.

One entry point serves all methods: ``eightbit.quantize_model(model, config)`` asks the config for the
replacement of each linear layer (``config.make_linear``). Configs round-trip through JSON
(``to_dict`` / ``config_from_dict``) for checkpoints and the transformers integration.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from typing import Any, ClassVar

import torch
from torch import nn

# method name -> module defining its config (imported on demand by config_from_dict)
_CONFIG_MODULES = {
    "llm_int8": "eightbit.quantize.llm_int8",
    "fp8": "eightbit.quantize.ptq",
    "int8_static": "eightbit.quantize.ptq",
}
_REGISTRY: dict[str, type["QuantConfig"]] = {}


def register_config(cls: type["QuantConfig"]) -> type["QuantConfig"]:
    """Class decorator: make ``cls`` loadable by its ``method`` name in ``config_from_dict``."""
    _REGISTRY[cls.method] = cls
    return cls


@dataclasses.dataclass
class QuantConfig:
    """Base of all quantization configs.

    Subclasses are dataclasses with a class-level ``method`` name and implement ``make_linear``.
    ``skip_modules``: name patterns of linear layers left in float. A pattern matches a module's full
    dotted name by ``fnmatch`` (``"encoder.layer.0.*"``), or any dotted suffix of it (``"lm_head"``
    matches ``"model.lm_head"``), of the layer or of a module above it (``"vision_tower"`` covers the layers
    under it; :func:`matches_any`).
    """

    method: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        """The quantized replacement of ``linear`` (an ``nn.Linear``; transformers ``Conv1D`` layers
        arrive already viewed as ``nn.Linear``). ``name`` is the layer's dotted name in the model."""
        raise NotImplementedError

    def is_skipped(self, name: str) -> bool:
        """True when the layer called ``name`` matches one of ``skip_modules``."""
        return matches_any(name, getattr(self, "skip_modules", ()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the config, with its ``method``."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantConfig":
        """Inverse of ``to_dict``; raises ValueError on a wrong method, unknown or ill-typed fields."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"config method {method!r} does not match {cls.__name__} ({cls.method!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; expected a subset of {sorted(names)}")
        try:
            kwargs = {k: _from_json(v) for k, v in data.items()}
            return cls(**kwargs)
        except (TypeError, OverflowError, RecursionError) as e:
            # OverflowError: a number too large for a float (a 400-digit threshold); RecursionError: nesting
            # deeper than any config has. Both are a damaged config, reported like every other one.
            raise ValueError(f"invalid {cls.__name__} fields: {type(e).__name__}: {str(e)[:200]}") from None


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Rebuild any registered config from ``QuantConfig.to_dict()`` output (ValueError when invalid)."""
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ValueError("config must be a JSON object with a string 'method'")
    method = data["method"]
    if method not in _REGISTRY and method in _CONFIG_MODULES:
        importlib.import_module(_CONFIG_MODULES[method])
    if method not in _REGISTRY:
        raise ValueError(f"unknown quantization method {method!r}; known: {sorted(_CONFIG_MODULES)}")
    return _REGISTRY[method].from_dict(data)


def check_patterns(value: Any, name: str = "skip_modules") -> tuple[str, ...]:
    """``value`` as a tuple of module name patterns; ValueError for a single string (it would iterate as letters),
    None or anything else that is not a sequence of strings (``()`` converts every layer)."""
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{name} must be a tuple or list of module name patterns (() for none), got {value!r}")
    return tuple(value)


def matches_any(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when dotted module ``name`` or one of its parents matches any pattern (fnmatch on the full name or a
    dotted suffix): a pattern naming a module covers every layer under it (``"vision_tower"``, ``"mlp"``), as
    transformers' ``llm_int8_skip_modules`` do, but only whole name components match (``"mlp"`` is not ``"xmlp"``)."""
    parts = name.split(".")
    paths = [".".join(parts[i:j]) for j in range(len(parts), 0, -1) for i in range(j)]  # suffixes of prefixes
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in paths)


def _to_json(v: Any) -> Any:
    if isinstance(v, torch.dtype):
        return "dtype:" + str(v).removeprefix("torch.")
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("dtype:"):
        dt = getattr(torch, v[len("dtype:"):], None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype {v!r} in config")
        return dt
    if isinstance(v, list):
        return tuple(_from_json(x) for x in v)
    if isinstance(v, dict):
        return {k: _from_json(x) for k, x in v.items()}
    return v
