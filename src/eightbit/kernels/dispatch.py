"""A small dispatcher: functional code asks for a fast kernel by op name and device type, and falls back
to its own plain-PyTorch reference when none is registered, when the kernel says it cannot take the
inputs, or when references are forced (``EIGHTBIT_REFERENCE=1`` or ``with reference_only():``).

Kernels register themselves at import of ``eightbit.kernels``::

    @register_kernel("int8_mm", "cpu")
    def _int8_mm_cpu(a, b): ...
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

_REGISTRY: dict[tuple[str, str], Callable] = {}
_state = threading.local()


def register_kernel(op: str, device_type: str, *, available: Callable[[], bool] = lambda: True) -> Callable:
    """Decorator registering ``fn`` as the fast path of ``op`` on ``device_type`` ("cpu", "cuda", ...).

    ``available()`` is checked once at registration; a kernel whose requirements are missing (an op absent
    from this torch build, say) is not registered, so the reference is used.
    """

    def deco(fn: Callable) -> Callable:
        try:
            ok = bool(available())
        except Exception:  # a probe that crashes means the kernel is not usable here
            ok = False
        if ok:
            _REGISTRY[(op, device_type)] = fn
        return fn

    return deco


def _forced_reference() -> bool:
    return getattr(_state, "reference", False) or os.environ.get("EIGHTBIT_REFERENCE", "0") == "1"


def get_kernel(op: str, device_type: str) -> Callable | None:
    """The registered fast kernel for ``op`` on ``device_type``, or None when the reference must run."""
    if _forced_reference():
        return None
    _ensure_loaded()
    return _REGISTRY.get((op, device_type))


def registered_kernels() -> list[tuple[str, str]]:
    """(op, device_type) pairs with a fast kernel on this machine (for `eightbit bench` and tests)."""
    _ensure_loaded()
    return sorted(_REGISTRY)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within this block every functional op runs its plain-PyTorch reference (thread-local)."""
    prev = getattr(_state, "reference", False)
    _state.reference = True
    try:
        yield
    finally:
        _state.reference = prev


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import eightbit.kernels  # noqa: F401  (imports the kernel modules, which register themselves)
