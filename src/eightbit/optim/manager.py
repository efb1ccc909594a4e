"""`GlobalOptimManager`: per-parameter optimizer overrides (e.g. 32-bit state for embeddings), with the
bitsandbytes usage pattern::

    mng = GlobalOptimManager.get_instance()
    mng.register_module_override(model.emb, "weight", {"optim_bits": 32})
    mng.override_config(model.fc.weight, "lr", 1e-4)

Overrides may be registered before or after the optimizer is built; they are read when the parameter
is stepped (state precision is fixed when its state is first created, at its first step).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable

import torch

__all__ = ["GlobalOptimManager"]


class GlobalOptimManager:
    """Process-wide registry of per-parameter config overrides (a singleton: use ``get_instance()``)."""

    _instance: "GlobalOptimManager | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        raise RuntimeError("use GlobalOptimManager.get_instance()")

    @classmethod
    def get_instance(cls) -> "GlobalOptimManager":
        """The singleton."""
        with cls._lock:
            if cls._instance is None:
                inst = cls.__new__(cls)
                inst._initialize()
                cls._instance = inst
        return cls._instance

    def _initialize(self) -> None:
        # id(param) -> (weakref to param, config); the weakref guards against id reuse after deletion
        self._param_configs: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}
        self._module_overrides: list[tuple[weakref.ref, str, dict[str, Any]]] = []

    def initialize(self) -> None:
        """Forget every override (bitsandbytes name)."""
        self._initialize()

    def register_parameters(self, params: Iterable[torch.Tensor] | torch.Tensor) -> None:
        """Accepted for bitsandbytes compatibility; overrides are keyed by the parameter object itself."""

    def override_config(
        self,
        parameters: torch.Tensor | Iterable[torch.Tensor],
        key: str | None = None,
        value: Any = None,
        key_value_dict: dict[str, Any] | None = None,
    ) -> None:
        """Override optimizer settings (``optim_bits``, ``lr``, ``betas``, ...) for the given parameter(s).

        Either ``key`` and ``value`` or ``key_value_dict``. Raises ValueError when neither is given."""
        if key is not None:
            cfg = {key: value}
        elif key_value_dict is not None:
            cfg = dict(key_value_dict)
        else:
            raise ValueError("override_config needs key and value, or key_value_dict")
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        for p in parameters:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"parameters must be tensors, got {type(p).__name__}")
            old = self._param_configs.get(id(p))
            merged = dict(old[1]) if old is not None and old[0]() is p else {}
            merged.update(cfg)
            self._param_configs[id(p)] = (weakref.ref(p), merged)

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict[str, Any]) -> None:
        """Override settings for ``getattr(module, param_name)``, resolved when the parameter is stepped."""
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self._module_overrides.append((weakref.ref(module), param_name, dict(config)))

    def get_config(self, p: torch.Tensor) -> dict[str, Any]:
        """The merged overrides for ``p`` (empty dict when none)."""
        out: dict[str, Any] = {}
        if self._module_overrides:
            alive = []
            for mref, name, cfg in self._module_overrides:
                m = mref()
                if m is None:
                    continue
                alive.append((mref, name, cfg))
                if getattr(m, name, None) is p:
                    out.update(cfg)
            self._module_overrides = alive
        entry = self._param_configs.get(id(p))
        if entry is not None:
            if entry[0]() is p:
                out.update(entry[1])
            else:
                del self._param_configs[id(p)]
        return out

    def _register_optimizer_params(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook called by every eightbit optimizer at construction (nothing to do: lookups are lazy)."""
