"""Block-wise quantization (Dettmers et al., 2021): flatten, cut into blocks, normalize each block by its
own absmax (float32), store the index of the nearest of 256 code values as uint8.

This module holds the one reference of block quantization (:func:`quantize_blocks`): the 8-bit optimizers'
reference and every kernel mirror it. Its rules:

* Non-finite input: a block holding a NaN or +-Inf gets absmax NaN and every code ``zero_index``, so the whole
  block dequantizes to NaN (loud, never a silently wrong finite value); every other block is unaffected.
* An all-zero block has absmax 0 and dequantizes to exact zeros.
* Nearest code: ``bucketize(x / absmax, midpoints)`` in float32, ties to the lower code; with a seed, rounding
  up or down at random onto the neighbouring codes (unbiased, :mod:`eightbit.functional.rounding`).

Meta tensors: ``quantize_blockwise`` of a meta ``x`` returns meta codes and a meta absmax of the right shapes
(the ops' fake implementations), so 8-bit states/layers can be laid out on the meta device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import FLOAT_DTYPES, check_out, check_tensor
from . import ops
from .codes import Codebook, codebook, dynamic_codebook
from .rounding import stochastic_round, uniform_from_index

__all__ = ["BlockwiseState", "QuantState", "quantize_blockwise", "dequantize_blockwise", "quantize_blocks",
           "check_blocksize"]

# 64 .. 16384, as bitsandbytes allows; the native kernels take blocks up to 4096, larger ones run the reference
VALID_BLOCKSIZES = tuple(2**i for i in range(6, 15))


@dataclass
class BlockwiseState:
    """What dequantization needs: absmax (float32, one per block), the 256-entry code, the block size,
    and the original shape and dtype."""

    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int
    shape: torch.Size
    dtype: torch.dtype

    def as_dict(self) -> dict:
        """bitsandbytes' ``QuantState.as_dict()`` layout: ``absmax``, ``quant_map`` (the code), ``blocksize``,
        ``dtype`` (a name such as "float32"), ``shape`` (a tuple) and ``quant_type`` (None for 8-bit)."""
        return {"quant_type": None, "absmax": self.absmax, "blocksize": self.blocksize, "quant_map": self.code,
                "dtype": str(self.dtype).removeprefix("torch."), "shape": tuple(self.shape)}

    @classmethod
    def from_dict(cls, qs_dict: dict, device: torch.device | str | None = None) -> "BlockwiseState":
        """Inverse of :meth:`as_dict` (also reads bitsandbytes' dict of an 8-bit state). ValueError on a
        nested (double-quantized) or 4-bit state, a bad dtype name, or a missing key."""
        if not isinstance(qs_dict, dict):
            raise TypeError(f"qs_dict must be a dict, got {type(qs_dict).__name__}")
        if qs_dict.get("quant_type") is not None or any(k.startswith("nested_") for k in qs_dict):
            raise ValueError("only 8-bit block-wise states without nested quantization can be read")
        missing = {"absmax", "blocksize", "quant_map", "dtype", "shape"} - set(qs_dict)
        if missing:
            raise ValueError(f"qs_dict lacks {sorted(missing)}")
        dtype = getattr(torch, str(qs_dict["dtype"]), None)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"qs_dict['dtype'] must name float32/bfloat16/float16, got {qs_dict['dtype']!r}")
        absmax, code = qs_dict["absmax"], qs_dict["quant_map"]
        if device is not None:
            absmax, code = absmax.to(device), code.to(device)
        return cls(absmax, code, check_blocksize(int(qs_dict["blocksize"])), torch.Size(qs_dict["shape"]), dtype)


QuantState = BlockwiseState  # bitsandbytes' name for the same state


def check_blocksize(blocksize: object) -> int:
    """``blocksize`` as an int; ValueError unless it is a power of two in 64..16384 (ints and NumPy's integers;
    not bools or floats)."""
    if (isinstance(blocksize, bool) or not hasattr(type(blocksize), "__index__")
            or int(blocksize) not in VALID_BLOCKSIZES):
        raise ValueError(f"blocksize must be a power of two in 64..16384, got {blocksize!r}")
    return int(blocksize)


# ---------------------------------------------------------------- the reference
def quantize_blocks(x2d: torch.Tensor, cb: Codebook, seed: int = -1, first: int = 0,
                    floor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference block quantization: (nblocks, width) float -> (uint8 codes, float32 absmax per block).

    ``seed >= 0`` rounds stochastically, element (r, c) drawing with index ``first + r * width + c`` (the
    element's position in the whole tensor); ``-1`` rounds to nearest. ``floor`` (the optimizers' states on
    unsigned maps): a positive value that would round to the zero code takes the next code up, the smallest
    positive one, so that a second moment too small for its block's map never decodes to 0. See the module
    docstring for NaN/Inf."""
    x = x2d.float()
    absmax = x.abs().amax(1, keepdim=True)  # NaN propagates: flags the block
    ok = torch.isfinite(absmax)
    if cb.pow2_scale:
        absmax = pow2_above(absmax)
    scale = torch.where(ok & (absmax > 0), absmax, torch.ones_like(absmax))
    n = x / scale
    idx = torch.bucketize(n, cb.midpoints).to(torch.int32)
    if seed >= 0:
        index = first + torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
        idx = stochastic_round(n, idx, cb.values, uniform_from_index(index, seed))
    if floor:
        idx = torch.where((n > 0) & (idx == cb.zero_index), idx + 1, idx)
    q = torch.where(ok, idx, torch.full_like(idx, cb.zero_index)).to(torch.uint8)
    return q, torch.where(ok, absmax, torch.full_like(absmax, float("nan"))).squeeze(1)


def pow2_above(absmax: torch.Tensor) -> torch.Tensor:
    """The block scale of binary dynamic maps: ``2^(floor(log2 a) + 1)`` for each normal float32 absmax ``a`` and
    2^-126 for a subnormal one, so every ``|x| / scale < 1``; 2^127 at most (a block with values from 2^127 up
    then has ``|x| / scale`` up to 2, clipped to the top code); 0 for 0, NaN/Inf unchanged. Exact
    (exponent-bit arithmetic)."""
    e = (absmax.view(torch.int32) >> 23) & 0xFF
    scale = ((e + 1).clamp(max=254) << 23).view(torch.float32)
    return torch.where(torch.isfinite(absmax) & (absmax > 0), scale, absmax)


def dequantize_blocks(q2d: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Reference: (nblocks, width) uint8 -> float32 values ``code[q] * absmax``."""
    return code[q2d.long()] * absmax.unsqueeze(1)


def _quantize_into(x: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor, absmax: torch.Tensor) -> None:
    cb = codebook(code)
    flat, qf = x.reshape(-1), out.view(-1)
    n = flat.numel()
    nfull = n // blocksize
    if nfull:
        q, a = quantize_blocks(flat[: nfull * blocksize].view(nfull, blocksize), cb)
        qf[: nfull * blocksize] = q.view(-1)
        absmax[:nfull] = a
    if n % blocksize:
        q, a = quantize_blocks(flat[nfull * blocksize :].view(1, -1), cb)
        qf[nfull * blocksize :] = q.view(-1)
        absmax[nfull:] = a


@ops.reference("quantize_blockwise")
def quantize_blockwise_reference(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of the ``quantize_blockwise`` op: (uint8 codes of x's shape, float32 absmax per block)."""
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    absmax = torch.empty(-(-x.numel() // blocksize), dtype=torch.float32, device=x.device)
    _quantize_into(x, code, blocksize, out, absmax)
    return out, absmax


@ops.reference("quantize_blockwise.out")
def _quantize_blockwise_out_reference(x, code, blocksize, *, out, absmax) -> None:
    _quantize_into(x, code, blocksize, out, absmax)


def _dequantize_into(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor) -> None:
    qf, of = q.reshape(-1), out.view(-1)
    n = qf.numel()
    nfull = n // blocksize
    if nfull:
        of[: nfull * blocksize] = dequantize_blocks(qf[: nfull * blocksize].view(nfull, blocksize), absmax[:nfull], code).view(-1)
    if n % blocksize:
        of[nfull * blocksize :] = dequantize_blocks(qf[nfull * blocksize :].view(1, -1), absmax[nfull:], code).view(-1)


@ops.reference("dequantize_blockwise")
def dequantize_blockwise_reference(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                                   dtype: torch.dtype) -> torch.Tensor:
    """Reference of the ``dequantize_blockwise`` op: ``code[q] * absmax`` per block, in ``dtype``."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    _dequantize_into(q, absmax, code, blocksize, out)
    return out


@ops.reference("dequantize_blockwise.out")
def _dequantize_blockwise_out_reference(q, absmax, code, blocksize, dtype, *, out) -> None:
    _dequantize_into(q, absmax, code, blocksize, out)


# ---------------------------------------------------------------- public functions
def code_on(code: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``code`` (default: the signed dynamic map) validated and on ``device``; a copy for another device is made
    once per code tensor. Raises TypeError/ValueError for a code that is not 256 finite sorted float32 values."""
    if code is None:
        return dynamic_codebook(True, device).values
    if torch.compiler.is_compiling():  # values are checked inside the op at run time
        return code.to(device)
    return codebook(code).to(device).values


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor | None = None, absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None, blocksize: int = 2048, nested: bool = False,
) -> tuple[torch.Tensor, BlockwiseState]:
    """Quantize ``x`` (any shape, fp32/bf16/fp16, contiguous or not) block-wise to uint8 codes. Arguments bind as
    bitsandbytes' ``quantize_blockwise(A, code, absmax, out, blocksize, nested)``; ``absmax``: optional float32
    buffer of ceil(numel / blocksize) entries for the scales; ``nested=True`` (double quantization) is not
    supported (ValueError). The default block size is 2048 (bitsandbytes: 4096).

    ``code``: 256 sorted float32 values (default: signed dynamic map). Returns ``(q, state)`` where
    ``q`` is uint8 with ``x``'s shape and ``state.absmax`` has ceil(numel / blocksize) float32 entries
    (the last block may be partial): each block's absmax, or with a binary dynamic map
    (``create_binary_dynamic_map``) the power of two above it (``pow2_above``); either way ``x ~ code[q] * absmax``. ``out``: optional uint8 buffer of ``x``'s shape (contiguous, same
    device) that receives the codes and is returned as ``q``; reusing one saves the allocation (a fresh
    large buffer is paid for in page faults). Raises TypeError for a non-float tensor or code, ValueError for
    a bad blocksize, a bad ``out``, or a code that is not 1-D, 256 finite non-decreasing values (checked once
    per code tensor and version, then cached). A meta ``x`` gives meta ``q`` and ``state.absmax``.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES)
    blocksize = check_blocksize(blocksize)
    if nested:
        raise ValueError("nested=True (double quantization of the absmax) is not supported")
    if out is not None:
        check_out(out, "out", shape=x.shape, dtype=torch.uint8, device=x.device)
    nblocks = -(-x.numel() // blocksize)
    if absmax is not None:
        check_out(absmax, "absmax", shape=torch.Size((nblocks,)), dtype=torch.float32, device=x.device)
    code = code_on(code, x.device)
    xc = x.contiguous()
    if out is None and absmax is None:
        q, absmax = ops.quantize_blockwise(xc, code, blocksize)
    else:
        q = out if out is not None else torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        absmax = absmax if absmax is not None else torch.empty(nblocks, dtype=torch.float32, device=x.device)
        ops.quantize_blockwise_out(xc, code, blocksize, out=q, absmax=absmax)
    return q, BlockwiseState(absmax, code, blocksize, x.shape, x.dtype)


def dequantize_blockwise(
    q: torch.Tensor, state: BlockwiseState | None = None, absmax: torch.Tensor | None = None,
    code: torch.Tensor | None = None, out: torch.Tensor | None = None, blocksize: int = 2048, nested: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: uint8 codes + state -> tensor of ``state.shape``/``state.dtype``.
    Arguments bind as bitsandbytes' ``dequantize_blockwise(A, quant_state, absmax, code, out, blocksize, nested)``:
    without ``state``, ``absmax`` (and optionally ``code``, default the signed dynamic map, and ``blocksize``)
    describe a float32 result of ``q``'s shape.

    ``out``: optional buffer of ``state.shape`` and ``state.dtype`` (contiguous, on ``q``'s device) that
    receives the values and is returned. Raises TypeError for non-uint8 ``q``, ValueError when ``q``,
    ``state.absmax`` or ``out`` has the wrong size (or ``out`` the wrong dtype/device/layout)."""
    check_tensor(q, "q", dtypes=(torch.uint8,))
    if nested:
        raise ValueError("nested=True (double quantization of the absmax) is not supported")
    if state is None:
        if absmax is None:
            raise ValueError("pass either state (a BlockwiseState) or absmax")
        check_tensor(absmax, "absmax")
        state = BlockwiseState(absmax, code if code is not None else dynamic_codebook(True, q.device).values,
                               blocksize, q.shape, torch.float32)
    if not isinstance(state, BlockwiseState):
        raise TypeError(f"state must be a BlockwiseState, got {type(state).__name__}")
    bs = check_blocksize(state.blocksize)
    n = q.numel()
    if n != torch.Size(state.shape).numel():
        raise ValueError(f"q has {n} elements but state.shape is {tuple(state.shape)}")
    check_tensor(state.absmax, "state.absmax")
    if state.absmax.numel() != -(-n // bs):
        raise ValueError(f"state.absmax must have {-(-n // bs)} entries, got {state.absmax.numel()}")
    if state.dtype not in FLOAT_DTYPES:
        raise TypeError(f"state.dtype must be one of float32/bfloat16/float16, got {state.dtype}")
    if out is not None:
        check_out(out, "out", shape=torch.Size(state.shape), dtype=state.dtype, device=q.device)
    code = code_on(state.code, q.device)
    absmax = state.absmax.to(q.device, torch.float32).reshape(-1).contiguous()
    qc = q.contiguous().view(state.shape)
    if out is None:
        return ops.dequantize_blockwise(qc, absmax, code, bs, state.dtype)
    ops.dequantize_blockwise_out(qc, absmax, code, bs, state.dtype, out=out)
    return out
