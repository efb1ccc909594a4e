"""Fused optimizer update on CPU: the block-wise "dequantize states -> 32-bit update -> requantize" chunk
function of `eightbit.optim.base`, compiled with torch.compile (dynamic shapes, so one compile serves
every chunk size). Each (rule, variant) gets its own code object so dynamo's per-function recompile limit
is never shared between optimizers; intermediates stay per chunk (a few MB), never a full-size copy.
"""
from __future__ import annotations

import types
from typing import Callable, Hashable

import torch

from .dispatch import register_kernel

_COMPILED: dict[Hashable, Callable] = {}


def _fresh_function(fn: Callable, key: Hashable) -> Callable:
    # A distinct code object per key: dynamo caches (and counts recompiles) per code object.
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{abs(hash(key)) % 10**8}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


@register_kernel("optim_blockwise_update", "cpu", available=lambda: hasattr(torch, "compile"))
def compiled_update(fn: Callable, key: Hashable) -> Callable:
    """The compiled version of the chunk-update function ``fn`` for variant ``key`` (cached)."""
    out = _COMPILED.get(key)
    if out is None:
        out = torch.compile(
            _fresh_function(fn, key), dynamic=True, options={"assert_indirect_indexing": False}
        )
        _COMPILED[key] = out
    return out
