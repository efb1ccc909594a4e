"""Block-wise quantization (Dettmers et al., 2021): flatten, cut into blocks, normalize each block by its
own absmax (float32), store the index of the nearest of 256 code values as uint8.

Non-finite input: a block holding a NaN or +-Inf gets absmax NaN, so the whole block dequantizes to NaN
(loud, never a silently wrong finite value); every other block's codes and absmax are unaffected.
An all-zero block has absmax 0 and dequantizes to exact zeros.

Meta tensors: ``quantize_blockwise`` of a meta ``x`` returns meta codes and a meta absmax of the right
shapes (no data-dependent work), so 8-bit states/layers can be laid out on the meta device.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .._checks import FLOAT_DTYPES, check_out, check_tensor
from ..kernels.dispatch import get_kernel
from .codes import create_dynamic_map

__all__ = ["BlockwiseState", "quantize_blockwise", "dequantize_blockwise"]

VALID_BLOCKSIZES = tuple(2**i for i in range(6, 13))  # 64 .. 4096


@dataclass
class BlockwiseState:
    """What dequantization needs: absmax (float32, one per block), the 256-entry code, the block size,
    and the original shape and dtype."""

    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int
    shape: torch.Size
    dtype: torch.dtype


def check_blocksize(blocksize: object) -> int:
    """Raise ValueError unless ``blocksize`` is a power of two in 64..4096."""
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize not in VALID_BLOCKSIZES:
        raise ValueError(f"blocksize must be a power of two in 64..4096, got {blocksize!r}")
    return int(blocksize)


@functools.lru_cache(maxsize=None)
def _default_code(device: torch.device) -> torch.Tensor:
    return create_dynamic_map(signed=True).to(device)


def code_midpoints(code: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(255 float32 midpoints between consecutive codes, index of the code nearest zero)."""
    c = code.double()
    return ((c[1:] + c[:-1]) / 2).float(), int(c.abs().argmin())


# code tensor -> ((version, data_ptr, device), midpoints, zero index): validating and deriving the
# midpoints costs a few host syncs; the same code tensor is passed on every call in practice
_CODE_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _check_code_shape(code: object) -> None:
    check_tensor(code, "code", dtypes=(torch.float32,), ndim=1)
    if code.numel() != 256:
        raise ValueError(f"code must have 256 entries, got {code.numel()}")


def check_code(code: object) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``code`` is a 1-D float32 tensor of 256 finite, non-decreasing
    values (``bucketize`` on its midpoints is only the nearest-code search for a sorted map)."""
    _check_code_shape(code)
    if code.is_meta:
        return code
    if not bool(torch.isfinite(code).all()):
        raise ValueError("code must hold finite values only (got NaN or Inf)")
    if not bool((code[1:] >= code[:-1]).all()):
        raise ValueError("code must be sorted in non-decreasing order")
    return code


def prepare_code(code: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(``code`` on ``device``, midpoints, zero index) after :func:`check_code`. The value checks and the
    midpoints are cached per code tensor, invalidated by in-place changes (``_version``) or a new device;
    the cheap type/shape checks run every time."""
    _check_code_shape(code)
    key = (code._version, code.data_ptr(), device)
    hit = _CODE_CACHE.get(code)
    if hit is not None and hit[0] == key:
        return code.to(device), hit[1], hit[2]
    check_code(code)
    on_device = code.to(device)
    if on_device.is_meta:
        mid, zero_idx = torch.empty(255, dtype=torch.float32, device=device), 0
    else:
        mid, zero_idx = code_midpoints(on_device)
    _CODE_CACHE[code] = (key, mid, zero_idx)  # values must not reference ``code`` (weak key)
    return on_device, mid, zero_idx


def quantize_blocks(x2d: torch.Tensor, code: torch.Tensor, mid: torch.Tensor, zero_idx: int):
    """Reference: (nblocks, blocksize) float -> (uint8 codes, float32 absmax per block).

    Codes are ``bucketize(x / absmax, midpoints)`` (nearest code; ties go to the lower code), computed in
    float32. NaN/Inf in a block: absmax NaN and codes ``zero_idx`` for that block only."""
    x = x2d.float()
    absmax = x.abs().amax(1, keepdim=True)
    ok = torch.isfinite(absmax)
    scale = torch.where(ok & (absmax > 0), absmax, torch.ones_like(absmax))
    idx = torch.bucketize(x / scale, mid)
    q = torch.where(ok, idx, torch.full_like(idx, zero_idx)).to(torch.uint8)
    return q, torch.where(ok, absmax, torch.full_like(absmax, float("nan"))).squeeze(1)


def dequantize_blocks(q2d: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Reference: (nblocks, blocksize) uint8 -> float32 values ``code[q] * absmax``."""
    return code[q2d.long()] * absmax.unsqueeze(1)


def _fill(out: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    """Write ``parts`` one after another into contiguous ``out``; a part a kernel already wrote in place is
    not copied."""
    flat_out, start = out.view(-1), 0
    for part in parts:
        if part.data_ptr() != flat_out[start:].data_ptr():
            flat_out[start : start + part.numel()].copy_(part.reshape(-1))
        start += part.numel()
    return out


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 2048, *, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, BlockwiseState]:
    """Quantize ``x`` (any shape, fp32/bf16/fp16, contiguous or not) block-wise to uint8 codes.

    ``code``: 256 sorted float32 values (default: signed dynamic map). Returns ``(q, state)`` where
    ``q`` is uint8 with ``x``'s shape and ``state.absmax`` has ceil(numel / blocksize) float32 entries
    (the last block may be partial). ``out``: optional uint8 buffer of ``x``'s shape (contiguous, same
    device) that receives the codes and is returned as ``q``; reusing one saves the allocation (a fresh
    large buffer is paid for in page faults). Raises TypeError for a non-float tensor or code, ValueError for
    a bad blocksize, a bad ``out``, or a code that is not 1-D, 256 finite non-decreasing values (checked once
    per code tensor and version, then cached). A meta ``x`` gives meta ``q`` and ``state.absmax``.
    """
    check_tensor(x, "x", dtypes=FLOAT_DTYPES)
    blocksize = check_blocksize(blocksize)
    if out is not None:
        check_out(out, "out", shape=x.shape, dtype=torch.uint8, device=x.device)
    if code is None:
        code = _default_code(x.device)
    code, mid, zero_idx = prepare_code(code, x.device)
    flat = x.reshape(-1)
    n = flat.numel()
    nfull = n // blocksize
    if n == 0 or x.is_meta:
        absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=x.device)
        q = out if out is not None else torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        return q, BlockwiseState(absmax, code, blocksize, x.shape, x.dtype)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    if nfull:
        body = flat[: nfull * blocksize].view(nfull, blocksize)
        kernel = get_kernel("quantize_blockwise", x.device.type)
        q_body = None if out is None else out.view(-1)[: nfull * blocksize].view(nfull, blocksize)
        res = kernel(body, code, mid, zero_idx, out=q_body) if kernel is not None else None
        parts.append(res if res is not None else quantize_blocks(body, code, mid, zero_idx))
    if n % blocksize:
        parts.append(quantize_blocks(flat[nfull * blocksize :].view(1, -1), code, mid, zero_idx))
    absmax = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
    state = BlockwiseState(absmax, code, blocksize, x.shape, x.dtype)
    if out is not None:
        return _fill(out, [p[0] for p in parts]), state
    q = parts[0][0].reshape(-1) if len(parts) == 1 else torch.cat([p[0].reshape(-1) for p in parts])
    return q.view(x.shape), state  # no copy in the common case (one part)


def dequantize_blockwise(q: torch.Tensor, state: BlockwiseState, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: uint8 codes + state -> tensor of ``state.shape``/``state.dtype``.

    ``out``: optional buffer of ``state.shape`` and ``state.dtype`` (contiguous, on ``q``'s device) that
    receives the values and is returned. Raises TypeError for non-uint8 ``q``, ValueError when ``q``,
    ``state.absmax`` or ``out`` has the wrong size (or ``out`` the wrong dtype/device/layout)."""
    check_tensor(q, "q", dtypes=(torch.uint8,))
    if not isinstance(state, BlockwiseState):
        raise TypeError(f"state must be a BlockwiseState, got {type(state).__name__}")
    bs = check_blocksize(state.blocksize)
    n = q.numel()
    if n != torch.Size(state.shape).numel():
        raise ValueError(f"q has {n} elements but state.shape is {tuple(state.shape)}")
    if state.absmax.numel() != -(-n // bs):
        raise ValueError(f"state.absmax must have {-(-n // bs)} entries, got {state.absmax.numel()}")
    if out is not None:
        check_out(out, "out", shape=torch.Size(state.shape), dtype=state.dtype, device=q.device)
    flat = q.reshape(-1)
    code = state.code.to(q.device)
    absmax = state.absmax.to(q.device, torch.float32)
    nfull = n // bs
    if n == 0:
        return out if out is not None else torch.empty(state.shape, dtype=state.dtype, device=q.device)
    parts: list[torch.Tensor] = []
    if nfull:
        body = flat[: nfull * bs].view(nfull, bs)
        kernel = get_kernel("dequantize_blockwise", q.device.type)
        if kernel is not None:
            o_body = None if out is None else out.view(-1)[: nfull * bs].view(nfull, bs)
            parts.append(kernel(body, absmax[:nfull], code, state.dtype, out=o_body).reshape(-1))
        else:
            parts.append(dequantize_blocks(body, absmax[:nfull], code).to(state.dtype).reshape(-1))
    if n % bs:
        tail = flat[nfull * bs :].view(1, -1)
        parts.append(dequantize_blocks(tail, absmax[nfull:], code).to(state.dtype).reshape(-1))
    if out is not None:
        return _fill(out, parts)
    result = parts[0] if len(parts) == 1 else torch.cat(parts)
    return result.view(state.shape)
