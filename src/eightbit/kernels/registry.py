"""Registration of device kernels against the ops of ``eightbit.functional.ops`` (torch.library), and the
switch that forces the references.

A kernel is registered for one op and one device type with :func:`register`; it is reached only through the
op (so ``torch.compile`` and ``torch.export`` never trace into it). A kernel may decline an input it cannot
take by returning ``NotImplemented``: the op's reference then runs on the same arguments. With
``EIGHTBIT_REFERENCE=1`` in the environment, or inside ``with reference_only():``, every registered kernel
hands over to the reference (the switch is read at call time, so it also applies inside compiled graphs).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Callable, Iterator

import torch

from ..functional import ops

__all__ = ["register", "reference_only", "registered_kernels", "forced_reference"]

_LIB = torch.library.Library("eightbit", "IMPL")
_REGISTERED: dict[tuple[str, str], Callable] = {}
_state = threading.local()


def forced_reference() -> bool:
    """Whether references are forced here and now (``EIGHTBIT_REFERENCE=1`` or inside ``reference_only()``)."""
    return getattr(_state, "reference", False) or os.environ.get("EIGHTBIT_REFERENCE", "0") == "1"


# Called with the new state whenever reference_only() switches: kernels registered from C++, which cannot read
# this module's thread-local flag, keep their own (kernels/cpu/torch_ext.py).
_SWITCH_HOOKS: list[Callable[[bool], object]] = []


def _set_reference(on: bool) -> None:
    _state.reference = on
    for hook in _SWITCH_HOOKS:
        hook(on)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within this block every eightbit op runs its plain-PyTorch reference (thread-local)."""
    prev = getattr(_state, "reference", False)
    _set_reference(True)
    try:
        yield
    finally:
        _set_reference(prev)


def register(op: str, device_type: str, *, available: Callable[[], bool] = lambda: True,
             qualname: str | None = None) -> Callable:
    """Decorator registering ``fn`` as the kernel of op ``op`` (a name of ``ops.SCHEMAS``) on ``device_type``.

    ``fn`` takes the op's arguments and returns its result, or ``NotImplemented`` to let the reference run.
    ``available()`` is asked once, at registration: a kernel whose requirements are missing here (no native
    library, no GPU toolchain) is not registered and the reference serves the device. ``qualname`` registers it
    under another op of the same schema instead (``eightbit_cpu::int8_linear_py``: where a C++ kernel serves the
    op and hands this one the cases it does not take)."""
    if op not in ops.SCHEMAS:
        raise ValueError(f"unknown op {op!r}; declared ops: {sorted(ops.SCHEMAS)}")
    references = ops.REFERENCES  # looked up per call: the reference of record, even if replaced later

    def deco(fn: Callable) -> Callable:
        try:
            ok = bool(available())
        except Exception:  # a probe that crashes means the kernel is not usable here
            ok = False
        if not ok:
            return fn

        @functools.wraps(fn)
        def kernel(*args, **kwargs):
            if forced_reference():
                return references[op](*args, **kwargs)
            out = fn(*args, **kwargs)
            return references[op](*args, **kwargs) if out is NotImplemented else out

        # register_kernel wraps the kernel in a dynamo-disable frame (~3 us a call): kept, so that eager code
        # between graph breaks of a compiled model never has dynamo try to trace a kernel's ctypes calls
        if qualname is None:
            torch.library.register_kernel(f"eightbit::{op}", device_type, kernel, lib=_LIB)
        else:
            torch.library.register_kernel(qualname, device_type, kernel)
        _REGISTERED[(op, device_type)] = fn
        return fn

    return deco


def registered_kernels() -> list[tuple[str, str]]:
    """(op, device type) pairs served by a kernel on this machine (the rest run their reference)."""
    return sorted(_REGISTERED)
