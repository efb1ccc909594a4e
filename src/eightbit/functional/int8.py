"""Int8 matrix multiplication and the LLM.int8() linear (vector-wise int8 + mixed-precision outliers).

Notation (SPEC §1): activations X [tokens, K], weight W [N, K] (PyTorch layout). X is quantized per row
(token), W per output row; the int8 product accumulates exactly and is rescaled by
``outer(absmax_x, absmax_w) / 127**2``. Hidden dimensions (columns of X) where any ``|x| >= threshold``
are outlier columns: they and the matching columns of W are multiplied in floating point and added.

The whole LLM.int8() forward is one op (``eightbit::int8_linear``), so the data-dependent number of outlier
columns never leaves it: ``torch.compile`` and ``torch.export`` see fixed output shapes. Its autograd formula
(gradient w.r.t. the input and the bias; the weight is frozen) is registered on the op.
"""
from __future__ import annotations

import math

import torch

from .._checks import FLOAT_DTYPES, check_number, check_tensor
from . import ops
from .vectorwise import INT8_MAX, int8_vectorwise_quant_reference

LINEAR_DTYPES = FLOAT_DTYPES + (torch.float64,)  # int8_linear's input and bias (after a module's .double())

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


# ---------------------------------------------------------------- references
@ops.reference("int8_mm")
def int8_mm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch reference of ``int8_mm``: float64 products of int8 values are exact for any K <= MAX_K."""
    return (a.double() @ b.double().T).to(torch.int32)


@ops.reference("int8_matmul_dequant")
def int8_matmul_dequant_reference(
    x_int8: torch.Tensor, x_absmax: torch.Tensor, w_int8: torch.Tensor, w_absmax: torch.Tensor
) -> torch.Tensor:
    """Reference: ``int8_mm(x_int8, w_int8) * outer(x_absmax, w_absmax) / 127**2`` in float32, [M, N]."""
    acc = int8_mm_reference(x_int8, w_int8).float()  # (M, N)
    return acc * (x_absmax.unsqueeze(1) / INT8_MAX) * (w_absmax.unsqueeze(0) / INT8_MAX)


def dequantize_weight_columns(w_int8: torch.Tensor, w_absmax: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float32 [N, len(cols)] dequantized columns of an int8 weight (only those columns are materialized)."""
    return w_int8.index_select(1, cols).float() * (w_absmax.unsqueeze(1) / INT8_MAX)


# Up to this many outlier columns their float32 product is summed column by column in a fixed order (what the
# native CPU kernel computes in its GEMM epilogue, bit for bit); more go through one BLAS product.
SEQUENTIAL_OUTLIER_COLUMNS = 32


def outlier_product(x_cols: torch.Tensor, w_cols: torch.Tensor) -> torch.Tensor:
    """Float32 [M, N] product of the outlier columns of x [M, C] with the dequantized weight columns [N, C].

    For C <= SEQUENTIAL_OUTLIER_COLUMNS it is summed in column order from zero, each term one float32 multiply
    and one add (``o = o + x[:, j] * w[:, j]``): an order any kernel can reproduce exactly, on any machine, where a
    BLAS product's order depends on the library and the CPU. Wider: ``x_cols @ w_cols.T``."""
    m, c = x_cols.shape
    if c > SEQUENTIAL_OUTLIER_COLUMNS:
        return x_cols @ w_cols.T
    out = x_cols.new_zeros((m, w_cols.shape[0]))
    for j in range(c):
        out = out + x_cols[:, j : j + 1] * w_cols[:, j]  # (M, 1) * (N,) -> (M, N)
    return out


@ops.reference("int8_linear")
def int8_linear_reference(x: torch.Tensor, weight: torch.Tensor, weight_absmax: torch.Tensor,
                          bias: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Reference of the ``int8_linear`` op: LLM.int8() for float ``x`` [M, K] and int8 ``weight`` [N, K],
    returning ``x.dtype`` [M, N]. Outlier columns run in float32: on CPUs without AMX-BF16 fp32 is both faster
    and more exact than 16-bit."""
    xf = x.float()
    q, x_absmax, mask = int8_vectorwise_quant_reference(xf, threshold)
    out = int8_matmul_dequant_reference(q, x_absmax, weight, weight_absmax)
    cols = mask.nonzero().squeeze(1)
    if cols.numel():
        out = out + outlier_product(xf.index_select(1, cols), dequantize_weight_columns(weight, weight_absmax, cols))
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


# ---------------------------------------------------------------- autograd of int8_linear
def dequantized_weight_chunks(w_int8: torch.Tensor, w_absmax: torch.Tensor, rows: int):
    """Yield ``(start, W[start:start+rows] as float32)``: bounded float copies of an int8 weight."""
    for start in range(0, w_int8.shape[0], rows):
        stop = min(start + rows, w_int8.shape[0])
        yield start, w_int8[start:stop].float() * (w_absmax[start:stop].unsqueeze(1) / INT8_MAX)


def _chunk_rows(k: int) -> int:
    return max(1, (2 << 20) // (4 * max(k, 1)))  # about 2 MB of float32 per chunk


class _Int8LinearFunction(torch.autograd.Function):
    """Forward: the op below autograd; backward: gradient of the dequantized linear w.r.t. x and the bias."""

    @staticmethod
    def forward(ctx, x, weight, weight_absmax, bias, threshold):
        ctx.save_for_backward(weight, weight_absmax)
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        with torch._C._AutoDispatchBelowAutograd():
            return ops.int8_linear(x, weight, weight_absmax, bias, threshold)

    @staticmethod
    def backward(ctx, grad_out):
        weight, weight_absmax = ctx.saved_tensors
        grad_x = grad_bias = None
        g = grad_out.float()  # (M, N)
        if ctx.needs_input_grad[0]:
            grad_x = g.new_zeros((g.shape[0], weight.shape[1]))
            for start, w in dequantized_weight_chunks(weight, weight_absmax, _chunk_rows(weight.shape[1])):
                grad_x = grad_x + g[:, start : start + w.shape[0]] @ w
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_bias = g.sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, grad_bias, None


def _int8_linear_autograd(x, weight, weight_absmax, bias, threshold):
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _Int8LinearFunction.apply(x, weight, weight_absmax, bias, threshold)
    with torch._C._AutoDispatchBelowAutograd():  # inference: no autograd node to build
        return ops.int8_linear(x, weight, weight_absmax, bias, threshold)


# A hand-written Autograd kernel instead of torch.library.register_autograd: the same formula at about half the
# per-call overhead (~9 us against ~18 us measured), which counts for small layers.
ops.LIB.impl("int8_linear", _int8_linear_autograd, "Autograd")


# ---------------------------------------------------------------- public functions
def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b.T`` for int8 ``a`` [M, K] and int8 ``b`` [N, K] (any M >= 0).

    Raises TypeError for non-int8 inputs and ValueError for mismatched shapes, devices or K > MAX_K."""
    _check_int8_pair(a, b, "a", "b")
    return ops.int8_mm(a.contiguous(), b.contiguous())


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
    for name, t in (("x_absmax", x_absmax), ("w_absmax", w_absmax)):
        if t.device != x_int8.device:
            raise ValueError(f"{name} is on device {t.device} but x_int8 is on {x_int8.device}")
    return ops.int8_matmul_dequant(x_int8.contiguous(), x_absmax.contiguous(), w_int8.contiguous(), w_absmax.contiguous())


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (int64, sorted) of the hidden dims (last dim of ``x``) where any ``|x| >= threshold``.

    ``threshold <= 0`` returns no columns (decomposition disabled). NaN never counts as an outlier."""
    check_tensor(x, "x", dtypes=FLOAT_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    if threshold == 0 or x.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    hits = (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)  # (K,)
    return hits.nonzero().squeeze(1)


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """LLM.int8() linear: ``y = x @ W.T + bias`` with vector-wise int8 and outlier decomposition.

    ``x``: fp32/bf16/fp16/fp64 [..., K]; ``weight_int8``: int8 [N, K]; ``weight_absmax``: float32 [N];
    ``bias``: float [N] or None (any of those dtypes). The int8 product and the outlier part run in float32
    whatever the input dtype (a float64 input is quantized from its float32 rounding). Columns of ``x`` with any ``|x| >= threshold`` run in float32
    (``threshold=0`` disables decomposition). Returns ``x.dtype`` [..., N]. Differentiable w.r.t. ``x``
    and ``bias`` (the weight is frozen). A row of ``x`` holding NaN gives a NaN output row; other rows
    are unaffected. Raises TypeError/ValueError on bad dtypes, shapes or devices.
    """
    check_tensor(x, "x", dtypes=LINEAR_DTYPES, min_ndim=1)
    check_tensor(weight_int8, "weight_int8", dtypes=(torch.int8,), ndim=2)
    check_tensor(weight_absmax, "weight_absmax", dtypes=(torch.float32,), ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    n, k = weight_int8.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim, weight_int8 expects {k}")
    if k == 0:
        raise ValueError("weight_int8 must have at least one input feature (K >= 1), got shape (N, 0)")
    if k > MAX_K:
        raise ValueError(f"K={k} exceeds {MAX_K}: the int32 accumulator could overflow")
    if weight_absmax.shape[0] != n:
        raise ValueError(f"weight_absmax must have shape ({n},), got {tuple(weight_absmax.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", dtypes=LINEAR_DTYPES, ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("weight_int8", weight_int8), ("weight_absmax", weight_absmax), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on device {t.device} but x is on {x.device}: all must share one device")
    flat = x.dim() == 2  # the common 2-D call skips the reshape and the view (~2 us of a small layer's call)
    x2 = x.contiguous() if flat else x.reshape(math.prod(x.shape[:-1]), k).contiguous()
    out = ops.int8_linear(x2, weight_int8.contiguous(), weight_absmax.contiguous(), bias, threshold)
    return out if flat else out.view(*x.shape[:-1], n)


class _Int8LinearFloatWeight(torch.autograd.Function):
    """LLM.int8() with a float weight that trains: forward quantizes the weight rows and runs the int8 op;
    backward uses the float weight (gradients for x, the weight and the bias), as bitsandbytes'
    ``has_fp16_weights=True``."""

    @staticmethod
    def forward(ctx, x, weight, bias, threshold):
        w_int8, w_absmax, _ = ops.int8_vectorwise_quant(weight.detach().float().contiguous(), 0.0)
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return ops.int8_linear(x, w_int8, w_absmax, bias, threshold)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g = grad_out.float()  # (M, N)
        grad_x = (g @ weight.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (g.T @ x.float()).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def int8_linear_float_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8() forward with a float ``weight`` [N, K] (fp32/bf16/fp16/fp64) quantized row-wise on every call;
    differentiable w.r.t. ``x``, ``weight`` and ``bias`` through the float weight. Shapes and dtypes as
    :func:`int8_linear`."""
    check_tensor(weight, "weight", dtypes=LINEAR_DTYPES, ndim=2)
    check_tensor(x, "x", dtypes=LINEAR_DTYPES, min_ndim=1)
    threshold = check_number(threshold, "threshold", low=0.0)
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim, weight expects {k}")
    if bias is not None:
        check_tensor(bias, "bias", dtypes=LINEAR_DTYPES, ndim=1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), k).contiguous()
    return _Int8LinearFloatWeight.apply(x2, weight, bias, threshold).view(*lead, n)
