"""Every eightbit op, declared once: its schema and its fake implementation (output shapes and dtypes, used by
``torch.compile``, ``torch.export`` and meta tensors). The plain-PyTorch reference of each op lives beside the
public function that calls it (``blockwise.py``, ``int8.py``, ...) and is registered here as the op's default
implementation, so an op runs on every device; device kernels (``eightbit.kernels``) register themselves for
their device type with ``torch.library`` and replace the reference there.

Why ops rather than Python calls: a kernel reached through an op is opaque to dynamo and inductor (they see
the schema and the fake implementation, never the ctypes call or a data pointer), data-dependent work such as
the outlier column count of LLM.int8() stays inside one op, and a new device needs no change outside
``eightbit.kernels``. Ops are defined with ``torch.library.Library`` rather than ``custom_op``: the call
overhead is ~8 us instead of ~45 us (measured on this project's VM), which matters for small layers.

Call an op as ``ops.quantize_blockwise(...)`` (the ``OpOverload``); ``ops.REFERENCES`` maps each op name to its
reference. ``all_ops()`` lists every declared op (the tests run ``torch.library.opcheck`` on each).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["LIB", "REFERENCES", "SCHEMAS", "all_ops", "reference"]

LIB = torch.library.Library("eightbit", "DEF")

# name -> schema. Shapes: x [M, K] activations, w [N, K] weights (PyTorch layout), blocks of `blocksize` over
# the flattened tensor. Every op takes contiguous inputs (the public functions make them so).
SCHEMAS: dict[str, str] = {
    # LLM.int8() (vector-wise int8)
    "int8_mm": "(Tensor a, Tensor b) -> Tensor",
    "int8_matmul_dequant": "(Tensor x, Tensor x_absmax, Tensor w, Tensor w_absmax) -> Tensor",
    "int8_vectorwise_quant": "(Tensor x, float threshold) -> (Tensor, Tensor, Tensor)",
    "int8_linear": "(Tensor x, Tensor weight, Tensor weight_absmax, Tensor? bias, float threshold) -> Tensor",
    # block-wise (8-bit optimizer states)
    "quantize_blockwise": "(Tensor x, Tensor code, int blocksize) -> (Tensor, Tensor)",
    "quantize_blockwise.out": "(Tensor x, Tensor code, int blocksize, *, Tensor(a!) out, Tensor(b!) absmax) -> ()",
    "dequantize_blockwise": "(Tensor q, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor",
    "dequantize_blockwise.out": (
        "(Tensor q, Tensor absmax, Tensor code, int blocksize, ScalarType dtype, *, Tensor(a!) out) -> ()"
    ),
    # fp8 and scale helpers (post-training quantization)
    # fp8 codes cross the op boundary as their uint8 bit patterns (float8 tensors lack the arithmetic that
    # torch.library.opcheck's checks run on inputs and outputs); fp8_dtype names the format
    "quantize_fp8": "(Tensor x, Tensor scale, ScalarType fp8_dtype, bool saturate) -> Tensor",
    "dequantize_fp8": "(Tensor q, Tensor scale, ScalarType fp8_dtype, ScalarType dtype) -> Tensor",
    "finite_amax": "(Tensor x, int? axis) -> Tensor",
    "fp8_linear": ("(Tensor x_q, Tensor x_scale, Tensor w_q, Tensor w_scale, Tensor? bias, ScalarType fp8_dtype, "
                   "ScalarType dtype) -> Tensor"),
    "finite_minmax": "(Tensor x, int? axis) -> (Tensor, Tensor)",
    # affine int8 codes for checked scale / zero point (0-dim, or one per slice along axis)
    "quantize_int8": "(Tensor x, Tensor scale, Tensor zero_point, int? axis, bool symmetric) -> Tensor",
    # optimizers: one update step of one parameter, state kept block-wise in 8 bits or in float32
    "optimizer_update": (
        "(str rule, Tensor(a!) p, Tensor g, Tensor(b!)[] states, Tensor(c!)[] absmaxes, Tensor[] codes, "
        "float[] hyper, int wd_mode, int blocksize, int[] seeds, Tensor(d!)? skipped=None) -> ()"
    ),
    # the same step for several parameters in one call (one rule, states per parameter: len(states) / len(ps);
    # hypers: the OptimHyper fields of each parameter in turn; skipped: empty or one counter per parameter)
    "optimizer_update_many": (
        "(str rule, Tensor(a!)[] ps, Tensor[] gs, Tensor(b!)[] states, Tensor(c!)[] absmaxes, Tensor[] codes, "
        "float[] hypers, int wd_mode, int[] blocksizes, int[] seeds, Tensor(d!)[] skipped) -> ()"
    ),
    # the squared norms of the step's direction and of the parameter, float32 (2,)
    "optimizer_update_norm": (
        "(str rule, Tensor p, Tensor g, Tensor[] states, Tensor[] absmaxes, Tensor[] codes, float[] hyper, "
        "int wd_mode, int blocksize) -> Tensor"
    ),
}

REFERENCES: dict[str, Callable] = {}


def _overload(name: str) -> torch._ops.OpOverload:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.eightbit, base), overload or "default")


for _name, _schema in SCHEMAS.items():
    LIB.define(_name + _schema)


def reference(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the plain-PyTorch default implementation of op ``name`` (all devices)."""

    def deco(fn: Callable) -> Callable:
        LIB.impl(name, fn, "CompositeExplicitAutograd")
        REFERENCES[name] = fn
        return fn

    return deco


def all_ops() -> dict[str, torch._ops.OpOverload]:
    """Every declared op by name (``"quantize_blockwise.out"`` for an overload)."""
    return {name: _overload(name) for name in SCHEMAS}


def _fake(name: str) -> Callable[[Callable], Callable]:
    return lambda fn: torch.library.register_fake(f"eightbit::{name}", fn, lib=LIB)


def _blocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


@_fake("int8_mm")
def _(a, b):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@_fake("int8_matmul_dequant")
def _(x, x_absmax, w, w_absmax):
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)


@_fake("int8_vectorwise_quant")
def _(x, threshold):
    m, k = x.shape
    return (x.new_empty((m, k), dtype=torch.int8), x.new_empty((m,), dtype=torch.float32),
            x.new_empty((k,), dtype=torch.bool))


@_fake("int8_linear")
def _(x, weight, weight_absmax, bias, threshold):
    return x.new_empty((x.shape[0], weight.shape[0]))


@_fake("quantize_blockwise")
def _(x, code, blocksize):
    return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty((_blocks(x.numel(), blocksize),), dtype=torch.float32)


@_fake("quantize_blockwise.out")
def _(x, code, blocksize, *, out, absmax):
    return None


@_fake("dequantize_blockwise")
def _(q, absmax, code, blocksize, dtype):
    return q.new_empty(q.shape, dtype=dtype)


@_fake("dequantize_blockwise.out")
def _(q, absmax, code, blocksize, dtype, *, out):
    return None


@_fake("quantize_fp8")
def _(x, scale, fp8_dtype, saturate):
    return x.new_empty(x.shape, dtype=torch.uint8)


@_fake("dequantize_fp8")
def _(q, scale, fp8_dtype, dtype):
    return q.new_empty(q.shape, dtype=dtype)


@_fake("fp8_linear")
def _(x_q, x_scale, w_q, w_scale, bias, fp8_dtype, dtype):
    return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=dtype)


@_fake("finite_amax")
def _(x, axis):
    return x.new_empty(() if axis is None else (x.shape[axis],), dtype=torch.float32)


@_fake("finite_minmax")
def _(x, axis):
    shape = () if axis is None else (x.shape[axis],)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@_fake("quantize_int8")
def _(x, scale, zero_point, axis, symmetric):
    return x.new_empty(x.shape, dtype=torch.int8 if symmetric else torch.uint8)


@_fake("optimizer_update")
def _(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, skipped=None):
    return None


@_fake("optimizer_update_many")
def _(rule, ps, gs, states, absmaxes, codes, hypers, wd_mode, blocksizes, seeds, skipped):
    return None


@_fake("optimizer_update_norm")
def _(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize):
    return p.new_empty((2,), dtype=torch.float32)


# Module attributes: ops.int8_mm, ops.quantize_blockwise_out, ... (the OpOverload of each declared op).
for _name in SCHEMAS:
    globals()[_name.replace(".", "_")] = _overload(_name)
