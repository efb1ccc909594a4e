"""Triton kernel of the ``optimizer_update`` and ``optimizer_update_norm`` ops: one program per block
dequantizes the block's states, applies the rule, writes the parameter and requantizes the states, all in
registers (8-bit states), or reads and writes float32 states (32-bit optimizers). Every rule of
``eightbit.functional.optimizer.RULES`` with 0 to 3 states; parameters and gradients float32, bfloat16 or
float16 (float64 parameters run the reference, which computes them in float64).

The arithmetic mirrors the reference rule by rule, in the same order, with correctly rounded division and
square root and no FMA contraction, so 8-bit states are bit-identical to the reference's and to the CPU
kernel's for the same seeds. L2 weight decay is one fused multiply-add (``tl.fma``), as the reference's
``addcmul``; Triton's CPU interpreter evaluates ``tl.fma`` with two roundings, which the tests account for.
No ``torch.compile``: one kernel per (rule, state count, dtype) specialization, compiled in about a second.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...functional.codes import codebook
from ...functional.optimizer import FIELDS, optimizer_update_reference, split_many
from ._common import LAUNCH, arg, device_guarded, kind_of, load_f32, on_device, store_f32, warps_for_block
from .blockwise import MAX_BLOCK, full_and_partial, padded_midpoints, quantize_block

RULE_IDS = {"adam": 0, "lamb": 1, "momentum": 2, "rmsprop": 3, "adagrad": 4, "lion": 5, "ademamix": 6}
assert FIELDS == ("lr", "weight_decay", "grad_scale", "update_scale", "beta1", "one_minus_beta1", "beta2",
                  "one_minus_beta2", "beta3", "one_minus_beta3", "alpha", "eps", "bias_correction1",
                  "bias_correction2_sqrt", "lr_decay", "nesterov"), "OptimHyper changed: update the kernel"


@triton.jit
def _load_state(s_ptr, a_ptr, c_ptr, offs, mask, b, EIGHT: tl.constexpr):
    if EIGHT:
        q = tl.load(s_ptr + offs, mask=mask, other=0).to(tl.int32)
        return tl.load(c_ptr + q) * tl.load(a_ptr + b)
    else:
        return tl.load(s_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _store_state(x, s_ptr, a_ptr, c_ptr, m_ptr, zero_index, seed, offs, mask, keep, b, EIGHT: tl.constexpr,
                 STOCHASTIC: tl.constexpr, POW2: tl.constexpr, FLOOR: tl.constexpr):
    if EIGHT:
        q, amax = quantize_block(x, mask, c_ptr, m_ptr, zero_index, seed, offs, STOCHASTIC, POW2, FLOOR)
        tl.store(s_ptr + offs, q, mask=mask & keep)
        tl.store(a_ptr + b, amax, mask=keep)
    else:
        tl.store(s_ptr + offs, x, mask=mask & keep)


@triton.jit
def optimizer_kernel(
    p_ptr, g_ptr, s0, s1, s2, a0, a1, a2, c0, c1, c2, m0, m1, m2, z0, z1, z2, seed0, seed1, seed2, norm_ptr,
    skip_ptr, start, width, block0,
    lr, weight_decay, grad_scale, update_scale, beta1, one_minus_beta1, beta2, one_minus_beta2, beta3,
    one_minus_beta3, alpha, eps, bias_correction1, bias_correction2_sqrt, lr_decay, nesterov,
    RULE: tl.constexpr, NSTATES: tl.constexpr, EIGHT: tl.constexpr, WD_MODE: tl.constexpr,
    SR0: tl.constexpr, SR1: tl.constexpr, SR2: tl.constexpr, PW0: tl.constexpr, PW1: tl.constexpr,
    PW2: tl.constexpr, FL0: tl.constexpr, FL1: tl.constexpr, FL2: tl.constexpr, P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    NORM: tl.constexpr, SKIP: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = block0 + pid  # this block's absmax entry
    lane = tl.arange(0, BLOCK)
    mask = lane < width
    offs = start + pid.to(tl.int64) * width + lane
    p = load_f32(p_ptr, offs, mask, P_KIND)
    g = load_f32(g_ptr, offs, mask, G_KIND)
    keep = True  # SKIP: set below, once the new states are known
    bad_g = tl.where(mask & ((g != g) | (tl.abs(g) == float("inf"))), 1, 0)
    g = g * grad_scale
    if WD_MODE == 1:
        g = tl.fma(p, weight_decay, g)  # one rounding, as the reference's addcmul
    x0 = g  # placeholders for the states a rule does not have
    x1 = g
    x2 = g
    if NSTATES > 0:
        x0 = _load_state(s0, a0, c0, offs, mask, b, EIGHT)
    if NSTATES > 1:
        x1 = _load_state(s1, a1, c1, offs, mask, b, EIGHT)
    if NSTATES > 2:
        x2 = _load_state(s2, a2, c2, offs, mask, b, EIGHT)
    if RULE == 0 or RULE == 1:  # adam, lamb
        x0 = x0 * beta1 + g * one_minus_beta1
        x1 = x1 * beta2 + g * g * one_minus_beta2
        d = tl.div_rn(x0 * tl.div_rn(1.0, bias_correction1), tl.sqrt_rn(x1) * tl.div_rn(1.0, bias_correction2_sqrt) + eps)
        if RULE == 1:
            d = d + weight_decay * p
    elif RULE == 2:  # momentum
        if NSTATES == 0:
            d = g
        else:
            x0 = x0 * beta1 + g * one_minus_beta1
            d = tl.where(nesterov != 0, g + beta1 * x0, x0)  # chosen: 0 * Inf would be NaN
    elif RULE == 3:  # rmsprop
        x0 = x0 * beta2 + g * g * one_minus_beta2
        d = tl.div_rn(g, tl.sqrt_rn(x0) + eps)
    elif RULE == 4:  # adagrad
        x0 = x0 + g * g
        d = tl.div_rn(g, tl.sqrt_rn(x0) + eps) * lr_decay
    elif RULE == 5:  # lion: torch.sign (NaN -> 0)
        c = x0 * beta1 + g * one_minus_beta1
        d = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
        x0 = x0 * beta2 + g * one_minus_beta2
    else:  # ademamix
        x0 = x0 * beta1 + g * one_minus_beta1
        x1 = x1 * beta3 + g * one_minus_beta3
        x2 = x2 * beta2 + g * g * one_minus_beta2
        d = tl.div_rn(x0 * tl.div_rn(1.0, bias_correction1) + alpha * x1,
                      tl.sqrt_rn(x2) * tl.div_rn(1.0, bias_correction2_sqrt) + eps)
    if SKIP:  # a NaN/Inf gradient, or a new 8-bit state that is not finite (a finite gradient whose square
        # overflows: the block's scale would be Inf): the block writes nothing and is counted
        bad = bad_g
        if EIGHT:
            if NSTATES > 0:
                bad = bad | tl.where(mask & ((x0 != x0) | (tl.abs(x0) == float("inf"))), 1, 0)
            if NSTATES > 1:
                bad = bad | tl.where(mask & ((x1 != x1) | (tl.abs(x1) == float("inf"))), 1, 0)
            if NSTATES > 2:
                bad = bad | tl.where(mask & ((x2 != x2) | (tl.abs(x2) == float("inf"))), 1, 0)
        nbad = tl.max(bad, axis=0)
        keep = nbad == 0
        tl.atomic_add(skip_ptr, nbad.to(tl.int64), mask=nbad > 0)  # no contended atomic for clean blocks
    if NORM:
        tl.store(norm_ptr + 2 * pid, tl.sum(tl.where(mask, d * d, 0.0), axis=0))
        tl.store(norm_ptr + 2 * pid + 1, tl.sum(tl.where(mask, p * p, 0.0), axis=0))
    else:
        if NSTATES > 0:
            _store_state(x0, s0, a0, c0, m0, z0, seed0, offs, mask, keep, b, EIGHT, SR0, PW0, FL0)
        if NSTATES > 1:
            _store_state(x1, s1, a1, c1, m1, z1, seed1, offs, mask, keep, b, EIGHT, SR1, PW1, FL1)
        if NSTATES > 2:
            _store_state(x2, s2, a2, c2, m2, z2, seed2, offs, mask, keep, b, EIGHT, SR2, PW2, FL2)
        if WD_MODE == 2:
            p = p * (1.0 - lr * weight_decay)
        store_f32(p_ptr, offs, p - (lr * update_scale) * d, mask & keep, P_KIND)


def _launch(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, norm, skipped=None):
    """Run the kernel over the full blocks and the partial last block; None when it does not apply."""
    k = len(states)
    eight = bool(absmaxes)
    if (rule not in RULE_IDS or blocksize > MAX_BLOCK or p.dtype == torch.float64 or g.dtype == torch.float64
            or not p.is_contiguous() or (not eight and any(s.dtype != torch.float32 for s in states))):
        return None
    g = g.contiguous()
    cbs = [codebook(c) for c in codes]
    pad = [p] * (3 - k)
    s = list(states) + pad
    a = list(absmaxes) + [p] * (3 - len(absmaxes))
    c = [cb.values for cb in cbs] + [p] * (3 - len(cbs))
    m = [padded_midpoints(cb) for cb in cbs] + [p] * (3 - len(cbs))
    z = [cb.zero_index for cb in cbs] + [0] * (3 - len(cbs))
    sd = [max(int(x), 0) for x in seeds] + [0] * (3 - len(seeds))
    sr = [int(x) >= 0 for x in seeds] + [False] * (3 - len(seeds))
    pw = [cb.pow2_scale for cb in cbs] + [False] * (3 - len(cbs))
    fl = [not cb.signed for cb in cbs] + [False] * (3 - len(cbs))  # quantize_blocks' floor
    n = p.numel()
    nblocks = -(-n // blocksize)
    partial = torch.empty(2 * nblocks if norm else 1, dtype=torch.float32, device=p.device)  # (norm) per block: d², p²
    for start, count, width, b0 in full_and_partial(n, blocksize):
        block = triton.next_power_of_2(width)
        optimizer_kernel[(count,)](
            arg(p), arg(g), *s, *a, *c, *m, *z, *sd, partial[2 * b0:] if norm else partial,
            skipped if skipped is not None else partial, start, width, b0,
            *[float(v) for v in hyper],
            RULE=RULE_IDS[rule], NSTATES=k, EIGHT=eight, WD_MODE=wd_mode, SR0=sr[0], SR1=sr[1], SR2=sr[2], PW0=pw[0], PW1=pw[1], PW2=pw[2],
            FL0=fl[0], FL1=fl[1], FL2=fl[2],
            P_KIND=kind_of(p.dtype), G_KIND=kind_of(g.dtype), NORM=norm, SKIP=skipped is not None, BLOCK=block,
            num_warps=warps_for_block(block), **LAUNCH)
    return partial


@device_guarded
def optimizer_update(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, skipped=None):
    """Kernel of ``optimizer_update`` (in place; ``skipped``: blocks with a NaN/Inf gradient write nothing and are
    counted with an atomic add); NotImplemented for float64 parameters."""
    return NotImplemented if _launch(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds,
                                     False, skipped) is None else None


def optimizer_update_many(rule, ps, gs, states, absmaxes, codes, hypers, wd_mode, blocksizes, seeds, skipped):
    """Kernel of ``optimizer_update_many``: the kernel launches of each parameter, on its own GPU (the reference
    for one the kernel declines), in one op call."""
    for p, g, s, a, c, h, bs, sd, sk in split_many(ps, gs, states, absmaxes, codes, hypers, blocksizes, seeds,
                                                     skipped):
        with on_device(p):
            launched = _launch(rule, p, g, s, a, c, h, wd_mode, bs, sd, False, sk)
        if launched is None:
            optimizer_update_reference(rule, p, g, s, a, c, h, wd_mode, bs, sd, sk)
    return None


@device_guarded
def optimizer_update_norm(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize):
    """Kernel of ``optimizer_update_norm``: the float32 (2,) squared norms of the direction and of the parameter
    (per-block float32 partial sums added by torch, so the order differs from the reference's: equal within
    float32 summation error)."""
    partial = _launch(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, [-1] * len(states), True)
    return NotImplemented if partial is None else partial.view(-1, 2).sum(0)

