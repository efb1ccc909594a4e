"""Int8 matrix multiplication and the LLM.int8() linear (vector-wise int8 + mixed-precision outliers).

Notation (SPEC §1): activations X [tokens, K], weight W [N, K] (PyTorch layout). X is quantized per row
(token), W per output row; the int8 product accumulates exactly and is rescaled by
``outer(absmax_x, absmax_w) / 127**2``. Hidden dimensions (columns of X) where any ``|x| >= threshold``
are outlier columns: they and the matching columns of W are multiplied in floating point and added.

Ops are declared once with ``torch.library.custom_op`` (schema + fake implementation, so they trace
under ``torch.compile``); each op body runs a fast kernel from ``eightbit.kernels`` when one is
registered for the device, else the plain-PyTorch reference below.
"""
from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_number, check_tensor
from ..kernels.dispatch import get_kernel
from .vectorwise import INT8_MAX, quantize_vectorwise

# |sum of K int8 products| <= 128*128*K (the -128 code included) must fit in int32.
MAX_K = (2**31 - 1) // (128 * 128)


def _check_int8_pair(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    check_tensor(a, a_name, dtypes=(torch.int8,), ndim=2)
    check_tensor(b, b_name, dtypes=(torch.int8,), ndim=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} [M, K] and {b_name} [N, K] must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] > MAX_K:
        raise ValueError(f"K={a.shape[1]} exceeds {MAX_K}: the int32 accumulator could overflow")
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


# ---------------------------------------------------------------- int8_mm
def int8_mm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch reference of ``int8_mm``: float64 products of int8 values are exact for any K <= MAX_K."""
    return (a.double() @ b.double().T).to(torch.int32)


@torch.library.custom_op("eightbit::int8_mm", mutates_args=())
def _int8_mm_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    kernel = get_kernel("int8_mm", a.device.type)
    return kernel(a, b) if kernel is not None else int8_mm_reference(a, b)


@_int8_mm_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b.T`` for int8 ``a`` [M, K] and int8 ``b`` [N, K] (any M >= 0).

    Raises TypeError for non-int8 inputs and ValueError for mismatched shapes, devices or K > MAX_K."""
    _check_int8_pair(a, b, "a", "b")
    return _int8_mm_op(a.contiguous(), b.contiguous())


# ---------------------------------------------------------------- int8 matmul with dequantization
def int8_matmul_dequant_reference(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    """Reference: ``int8_mm(x_int8, w_int8) * outer(x_absmax, w_absmax) / 127**2`` in float32, [M, N]."""
    acc = int8_mm_reference(x_int8, w_int8).float()  # (M, N)
    return acc * (x_absmax.unsqueeze(1) / INT8_MAX) * (w_absmax.unsqueeze(0) / INT8_MAX)


@torch.library.custom_op("eightbit::int8_matmul_dequant", mutates_args=())
def _int8_matmul_dequant_op(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    kernel = get_kernel("int8_matmul_dequant", x_int8.device.type)
    if kernel is not None:
        return kernel(x_int8, x_absmax, w_int8, w_absmax)
    return int8_matmul_dequant_reference(x_int8, x_absmax, w_int8, w_absmax)


@_int8_matmul_dequant_op.register_fake
def _(x_int8, x_absmax, w_int8, w_absmax):
    return x_int8.new_empty((x_int8.shape[0], w_int8.shape[0]), dtype=torch.float32)


def int8_matmul_dequant(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    """Vector-wise int8 matmul, dequantized: float32 [M, N] from int8 x [M, K] with float32 absmax [M]
    and int8 w [N, K] with float32 absmax [N]."""
    _check_int8_pair(x_int8, w_int8, "x_int8", "w_int8")
    check_tensor(x_absmax, "x_absmax", dtypes=(torch.float32,), ndim=1)
    check_tensor(w_absmax, "w_absmax", dtypes=(torch.float32,), ndim=1)
    if x_absmax.shape[0] != x_int8.shape[0] or w_absmax.shape[0] != w_int8.shape[0]:
        raise ValueError("x_absmax must have one value per row of x_int8 and w_absmax one per row of w_int8")
    return _int8_matmul_dequant_op(x_int8.contiguous(), x_absmax.contiguous(), w_int8.contiguous(), w_absmax.contiguous())


# ---------------------------------------------------------------- LLM.int8() linear
def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (int64, sorted) of the hidden dims (last dim of ``x``) where any ``|x| >= threshold``.

    ``threshold <= 0`` returns no columns (decomposition disabled). NaN never counts as an outlier."""
    check_tensor(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    if threshold == 0 or x.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    hits = (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)  # (K,)
    return hits.nonzero().squeeze(1)


def dequantize_weight_columns(w_int8: torch.Tensor, w_absmax: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float32 [N, len(cols)] dequantized columns of an int8 weight (only those columns are materialized)."""
    return w_int8.index_select(1, cols).float() * (w_absmax.unsqueeze(1) / INT8_MAX)


def dequantized_weight_chunks(w_int8: torch.Tensor, w_absmax: torch.Tensor, rows: int):
    """Yield ``(start, W[start:start+rows] as float32)``: bounded float copies of an int8 weight."""
    for start in range(0, w_int8.shape[0], rows):
        stop = min(start + rows, w_int8.shape[0])
        yield start, w_int8[start:stop].float() * (w_absmax[start:stop].unsqueeze(1) / INT8_MAX)


def _chunk_rows(k: int) -> int:
    return max(1, (2 << 20) // (4 * max(k, 1)))  # about 2 MB of float32 per chunk


def prepack_weight(weight_int8: torch.Tensor) -> torch.Tensor | None:
    """A device-specific packed copy of ``weight_int8`` [N, K] for ``int8_linear(..., packed_weight=)``,
    or None when this device has no packed kernel (or references are forced). Pack once per weight and
    cache it outside the state_dict (``Linear8bitLt`` does); packing a 4096x4096 weight takes ~70 ms on CPU."""
    check_tensor(weight_int8, "weight_int8", dtypes=(torch.int8,), ndim=2)
    kernel = get_kernel("int8_prepack", weight_int8.device.type)
    return None if kernel is None else kernel(weight_int8)


def packed_weight_useful(device_type: str) -> bool:
    """Whether ``int8_linear`` on ``device_type`` would use a packed weight, so that packing is worth its memory
    (a packed copy is as large as the int8 weight). False where the fused kernel serves every input size."""
    return get_kernel("int8_matmul_dequant_outliers", device_type) is None


def _int8_linear_forward(x2: torch.Tensor, w_int8, w_absmax, threshold: float, packed=None) -> torch.Tensor:
    xf = x2.float()  # (T, K)
    prepare = get_kernel("int8_prepare_activations", xf.device.type)
    prepared = prepare(xf, threshold) if prepare is not None else None
    if prepared is not None:  # one pass: outlier scan + vector-wise quantization
        xq, xabs, cols = prepared
    else:
        cols = outlier_columns(xf, threshold)
        if cols.numel():
            xq, xabs = quantize_vectorwise(xf.index_fill(1, cols, 0.0))
        else:
            xq, xabs = quantize_vectorwise(xf)
    fused = get_kernel("int8_matmul_dequant_outliers", xq.device.type)
    if fused is not None:  # outlier columns in the same pass over the weight (None: not applicable)
        xo = xf.index_select(1, cols) if cols.numel() else None  # (T, C)
        out = fused(xq, xabs, w_int8, w_absmax, xo, cols if cols.numel() else None)  # (T, N)
        if out is not None:
            return out
    kernel = None if packed is None else get_kernel("int8_matmul_dequant_packed", xq.device.type)
    if kernel is not None:
        out = kernel(xq, xabs, packed, w_absmax)  # (T, N)
    else:
        out = int8_matmul_dequant(xq, xabs, w_int8, w_absmax)  # (T, N)
    if cols.numel():
        # Outliers in float32: on CPUs without AMX-BF16, fp32 is both faster and more exact than 16-bit.
        out = out + xf.index_select(1, cols) @ dequantize_weight_columns(w_int8, w_absmax, cols).T
    return out


class _Int8Linear(torch.autograd.Function):
    """Forward: LLM.int8(); backward: gradient of the dequantized linear w.r.t. x (weight frozen)."""

    @staticmethod
    def forward(ctx, x2, w_int8, w_absmax, bias, threshold, packed):
        ctx.save_for_backward(w_int8, w_absmax)
        ctx.has_bias = bias is not None
        out = _int8_linear_forward(x2, w_int8, w_absmax, threshold, packed)
        if bias is not None:
            out = out + bias.float()
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w_int8, w_absmax = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            g = grad_out.float()  # (T, N)
            grad_x = g.new_zeros((g.shape[0], w_int8.shape[1]))
            for start, w in dequantized_weight_chunks(w_int8, w_absmax, _chunk_rows(w_int8.shape[1])):
                grad_x += g[:, start : start + w.shape[0]] @ w
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.float().sum(0)
        return grad_x, None, None, grad_bias, None, None


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
    *,
    packed_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLM.int8() linear: ``y = x @ W.T + bias`` with vector-wise int8 and outlier decomposition.

    ``x``: fp32/bf16/fp16 [..., K]; ``weight_int8``: int8 [N, K]; ``weight_absmax``: float32 [N];
    ``bias``: float [N] or None. Columns of ``x`` with any ``|x| >= threshold`` run in float32
    (``threshold=0`` disables decomposition). Returns ``x.dtype`` [..., N]. Differentiable w.r.t. ``x``
    and ``bias`` (the weight is frozen). A row of ``x`` holding NaN gives a NaN output row; other rows
    are unaffected. ``packed_weight``: optional ``prepack_weight(weight_int8)`` result (must match
    ``weight_int8``), enabling the fastest kernel. Raises TypeError/ValueError on bad dtypes or shapes.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor(weight_int8, "weight_int8", dtypes=(torch.int8,), ndim=2)
    check_tensor(weight_absmax, "weight_absmax", dtypes=(torch.float32,), ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    n, k = weight_int8.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim, weight_int8 expects {k}")
    if k == 0:
        raise ValueError("weight_int8 must have at least one input feature (K >= 1), got shape (N, 0)")
    if weight_absmax.shape[0] != n:
        raise ValueError(f"weight_absmax must have shape ({n},), got {tuple(weight_absmax.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", dtypes=FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("weight_int8", weight_int8), ("weight_absmax", weight_absmax), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on device {t.device} but x is on {x.device}: all must share one device")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        out = _Int8Linear.apply(x2, weight_int8, weight_absmax, bias, threshold, packed_weight)
    else:  # inference: no autograd node to build
        out = _int8_linear_forward(x2, weight_int8, weight_absmax, threshold, packed_weight)
        if bias is not None:
            out = out.add_(bias) if bias.dtype == torch.float32 else out + bias.float()
    return out.to(x.dtype).reshape(*lead, n)
