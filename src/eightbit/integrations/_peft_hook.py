"""Registers eightbit's LoRA layer with PEFT as soon as PEFT is imported, so that ``get_peft_model`` on a model with
``Linear8bitLt`` layers works without importing ``eightbit.integrations.peft`` first (PEFT otherwise rejects the
layer type). Importing PEFT costs seconds (it pulls in accelerate, torchao, ...), so ``import eightbit`` never does it:
if PEFT is already imported the layer is registered at once, else a one-shot import hook registers it right after
``import peft`` finishes."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

_installed = False


def _register() -> None:
    try:
        import eightbit.integrations.peft  # noqa: F401  (patches LoraConfig)
    except Exception as e:  # an incompatible PEFT must not break `import peft`; say why once
        warnings.warn(f"eightbit: LoRA on Linear8bitLt not registered with PEFT ({type(e).__name__}: {e}); "
                      "import eightbit.integrations.peft to see the error", RuntimeWarning, stacklevel=2)


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds ``peft`` with the other finders and wraps its loader so that registration runs after it loads."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "peft":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate the package
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if PEFT is imported, else once it is (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    if "peft" in sys.modules:
        _register()
    else:
        sys.meta_path.insert(0, _AfterPeftImport())
