"""CUDA kernels (Triton) registered against the eightbit ops for the ``cuda`` device type.

Imported by :mod:`eightbit.kernels` only where a CUDA device and Triton exist (``import eightbit`` stays light
elsewhere). The launchers in :mod:`.int8`, :mod:`.blockwise` and :mod:`.optimizer` take tensors on any device
Triton runs on, so the tests run them on CPU tensors under ``TRITON_INTERPRET=1`` against the references.

Which GEMM serves LLM.int8() on CUDA: the Triton kernel (dequantization, outlier sum, bias and cast in its
epilogue) by default; ``EIGHTBIT_CUDA_GEMM=int_mm`` selects ``torch._int_mm`` (cuBLAS) where its shape
constraints hold (:func:`.int_mm.int_mm_applies`), with the same epilogue as torch ops. ``fp8_linear`` runs
``torch._scaled_mm`` on FP8 tensor cores (compute capability >= 8.9, :mod:`.fp8`).
"""
from __future__ import annotations

import os

import torch

from ..registry import register
from . import blockwise, fp8, int8, int_mm, optimizer

__all__ = ["KERNELS", "blockwise", "fp8", "gemm_backend", "int8", "int_mm", "optimizer", "register_all"]


def gemm_backend() -> str:
    """``"triton"`` (default) or ``"int_mm"``, from ``EIGHTBIT_CUDA_GEMM`` (read per call)."""
    value = os.environ.get("EIGHTBIT_CUDA_GEMM", "triton")
    if value not in ("triton", "int_mm"):
        raise ValueError(f"EIGHTBIT_CUDA_GEMM must be 'triton' or 'int_mm', got {value!r}")
    return value


def _int8_mm(a, b):
    if gemm_backend() == "int_mm" and int_mm.int_mm_applies(a, b):
        return int_mm.int8_mm(a, b)
    return int8.int8_mm(a, b)


def _int8_matmul_dequant(x, x_absmax, w, w_absmax):
    if gemm_backend() == "int_mm" and int_mm.int_mm_applies(x, w):
        return int_mm.int8_matmul_dequant(x, x_absmax, w, w_absmax)
    return int8.int8_matmul_dequant(x, x_absmax, w, w_absmax)


def _int8_linear(x, weight, weight_absmax, bias, threshold):
    if gemm_backend() == "int_mm" and int_mm.int_mm_applies(x, weight):
        return int_mm.int8_linear(x, weight, weight_absmax, bias, threshold)
    return int8.int8_linear(x, weight, weight_absmax, bias, threshold)


def _quantize_blockwise_out(x, code, blocksize, *, out, absmax):
    blockwise.quantize_into(x, code, blocksize, out, absmax)


def _dequantize_blockwise_out(q, absmax, code, blocksize, dtype, *, out):
    blockwise.dequantize_into(q, absmax, code, blocksize, out)


KERNELS = {
    "int8_mm": _int8_mm,
    "int8_matmul_dequant": _int8_matmul_dequant,
    "int8_vectorwise_quant": int8.vectorwise_quant,
    "int8_linear": _int8_linear,
    "quantize_blockwise": blockwise.quantize_blockwise,
    "quantize_blockwise.out": _quantize_blockwise_out,
    "dequantize_blockwise": blockwise.dequantize_blockwise,
    "dequantize_blockwise.out": _dequantize_blockwise_out,
    "optimizer_update": optimizer.optimizer_update,
    "optimizer_update_many": optimizer.optimizer_update_many,
    "optimizer_update_norm": optimizer.optimizer_update_norm,
    "fp8_linear": fp8.fp8_linear,
}
"""op name -> the Triton kernel that serves it (every other op runs its reference on CUDA)."""


def register_all(device_type: str = "cuda") -> None:
    """Register every kernel of :data:`KERNELS` for ``device_type``. "cuda" at import where a GPU exists; the
    tests also register them for "cpu" in a child process, under the interpreter, to run whole models and
    optimizers through the dispatcher on these kernels."""
    for op, fn in KERNELS.items():
        register(op, device_type)(fn)


if torch.cuda.is_available():
    register_all("cuda")
