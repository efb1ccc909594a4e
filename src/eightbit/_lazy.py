"""Lazy attribute exports: `import eightbit` stays light (no transformers, no matplotlib)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a module-level ``__getattr__``/``__dir__`` pair.

    ``exports`` maps a public name to the relative module that defines it (e.g. ``".vectorwise"``).
    The module is imported on first access only.
    """

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(target, package)
        # A target naming a submodule itself (".optim") exports the module.
        return module if target.lstrip(".") == name else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
