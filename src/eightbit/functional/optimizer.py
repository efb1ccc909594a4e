"""One optimizer step of one parameter with block-wise 8-bit (or float32) state: the update rules and the
reference of the ``optimizer_update`` / ``optimizer_update_norm`` ops.

A rule is a pure per-element function ``rule(g, p, states, h) -> (direction, new_states)`` on float chunks;
the step around it is shared: dequantize the states of a chunk of blocks, apply the rule, requantize (round to
nearest, or stochastically with a seed), then ``p = p * decay - lr * update_scale * direction``. A full
32-bit copy of a state is never made: the reference works on chunks of ``CHUNK_ELEMENTS`` values.

Rules (``RULES``) and their states, in order:

* ``"adam"``: m (signed code), v (unsigned); direction ``(m * (1 / bc1)) / (sqrt(v) * (1 / sqrt(bc2)) + eps)``.
* ``"lamb"``: Adam's direction plus ``weight_decay * p`` (the optimizer scales it by the trust ratio).
* ``"momentum"``: SGD's buffer (signed) or no state; direction ``buf`` (Nesterov: ``g + momentum * buf``).
* ``"rmsprop"``: v (unsigned); direction ``g / (sqrt(v) + eps)``.
* ``"adagrad"``: the sum of squares (unsigned); direction ``g / (sqrt(sum) + eps) * lr_decay``.
* ``"lion"``: m (signed); direction ``sign(beta1 * m + (1 - beta1) * g)``, then ``m = beta2 * m + (1 - beta2) g``.
* ``"ademamix"``: m1, m2 (signed), nu (unsigned); Adam's direction with ``alpha * m2`` (a slow EMA) added.

Hyperparameters travel as :class:`OptimHyper`, whose field order is the ``float[] hyper`` of the op schema and
the C struct of the native kernels (mirrored field by field, checked when the library loads). Complements
such as ``1 - beta1`` are computed in float64 by the optimizer and passed, so every kernel rounds them alike.

Parameters of any float dtype: the update runs in float32, or in float64 for float64 parameters (so their
precision is kept), and is written back in the parameter's dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch

from . import ops
from .blockwise import quantize_blocks
from .codes import codebook

__all__ = ["OptimHyper", "RULES", "STATE_COUNTS", "optimizer_update", "optimizer_update_many", "optimizer_update_norm",
           "WD_NONE", "WD_L2", "WD_DECOUPLED"]

WD_NONE, WD_L2, WD_DECOUPLED = 0, 1, 2  # weight decay: none, added to the gradient, decoupled (AdamW)
CHUNK_ELEMENTS = 2**18  # elements per chunk of the reference: intermediates stay ~1 MB per state


@dataclasses.dataclass(frozen=True)
class OptimHyper:
    """The scalars of one step. Which a rule reads is in its docstring; the rest keep their defaults.

    ``beta1``/``one_minus_beta1``: Adam/Lion beta1, or SGD's momentum and its gradient factor (1 on the first
    step, else 1 - dampening). ``beta2``/``one_minus_beta2``: Adam/Lion beta2, RMSprop's alpha.
    ``beta3``/``one_minus_beta3``/``alpha``: AdEMAMix's slow EMA and its weight. ``bias_correction1`` =
    1 - beta1**step, ``bias_correction2_sqrt`` = sqrt(1 - beta2**step). ``lr_decay``: Adagrad's factor
    1 / (1 + (step - 1) * lr_decay). ``nesterov``: 1.0 or 0.0. ``grad_scale`` multiplies the gradient
    (percentile clipping), ``update_scale`` the step (max_unorm, trust ratios)."""

    lr: float = 0.0
    weight_decay: float = 0.0
    grad_scale: float = 1.0
    update_scale: float = 1.0
    beta1: float = 0.0
    one_minus_beta1: float = 1.0
    beta2: float = 0.0
    one_minus_beta2: float = 1.0
    beta3: float = 0.0
    one_minus_beta3: float = 1.0
    alpha: float = 0.0
    eps: float = 0.0
    bias_correction1: float = 1.0
    bias_correction2_sqrt: float = 1.0
    lr_decay: float = 1.0
    nesterov: float = 0.0

    def as_list(self) -> list[float]:
        """The values in field order (the op's ``hyper`` argument)."""
        values = self.__dict__.get("_values")  # built once: an optimizer step passes one object for many tensors
        if values is None:
            values = tuple(float(getattr(self, name)) for name in FIELDS)  # FIELDS: below (fields() per call is slow)
            object.__setattr__(self, "_values", values)
        return list(values)


FIELDS = tuple(f.name for f in dataclasses.fields(OptimHyper))
_Scalars = NamedTuple("_Scalars", [(name, torch.Tensor) for name in FIELDS])


def _scalars(hyper: list[float], dtype: torch.dtype, device: torch.device) -> _Scalars:
    # 0-dim tensors of the compute dtype: arithmetic with them rounds exactly as the native kernels' float math
    return _Scalars(*torch.tensor(hyper, dtype=dtype, device=device).unbind())


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root. torch's vectorized float32 sqrt on CPU is not (about 17 % of results are an
    ulp off), and the kernels use the IEEE instruction; through float64 the result is exact after the final
    rounding (53 >= 2 * 24 + 2 bits, so the double rounding is innocuous)."""
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return x.double().sqrt().float()
    return x.sqrt()


# ---------------------------------------------------------------- rules
def _inv(x: torch.Tensor) -> torch.Tensor:
    """1 / x, correctly rounded in x's dtype (the kernels compute the same once per step)."""
    return 1 / x


def adam_rule(g, p, s, h):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; direction (m * (1 / bc1)) / (sqrt(v) * (1 / sqrt(bc2)) + eps).

    The bias corrections multiply by their reciprocals: one division per element instead of three (the
    division unit bounds the native kernel's step; torch's fused AdamW makes two), within an ulp of dividing."""
    m = s[0] * h.beta1 + g * h.one_minus_beta1
    v = s[1] * h.beta2 + g * g * h.one_minus_beta2
    return (m * _inv(h.bias_correction1)) / (_sqrt(v) * _inv(h.bias_correction2_sqrt) + h.eps), [m, v]


def lamb_rule(g, p, s, h):
    """Adam's direction + weight_decay * p (the trust ratio is applied through update_scale)."""
    d, new = adam_rule(g, p, s, h)
    return d + h.weight_decay * p, new


def momentum_rule(g, p, s, h):
    """buf = momentum buf + c g (beta1 = momentum, one_minus_beta1 = c); direction buf, or g + momentum buf
    with Nesterov (chosen, not blended by multiplying with 0 or 1: a huge finite buf would make the unused term
    Inf and 0 * Inf NaN). No state: direction g."""
    if not s:
        return g, []
    buf = s[0] * h.beta1 + g * h.one_minus_beta1
    return torch.where(h.nesterov != 0, g + h.beta1 * buf, buf), [buf]


def rmsprop_rule(g, p, s, h):
    """v = alpha v + (1 - alpha) g^2 (beta2 = alpha); direction g / (sqrt(v) + eps)."""
    v = s[0] * h.beta2 + g * g * h.one_minus_beta2
    return g / (_sqrt(v) + h.eps), [v]


def adagrad_rule(g, p, s, h):
    """sum += g^2; direction g / (sqrt(sum) + eps) * lr_decay."""
    acc = s[0] + g * g
    return g / (_sqrt(acc) + h.eps) * h.lr_decay, [acc]


def lion_rule(g, p, s, h):
    """direction sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g."""
    d = torch.sign(s[0] * h.beta1 + g * h.one_minus_beta1)
    return d, [s[0] * h.beta2 + g * h.one_minus_beta2]


def ademamix_rule(g, p, s, h):
    """AdEMAMix (Pagliardini et al., 2024): m1 = b1 m1 + (1 - b1) g; m2 = b3 m2 + (1 - b3) g (slow EMA);
    nu = b2 nu + (1 - b2) g^2; direction (m1 / bc1 + alpha m2) / (sqrt(nu) / sqrt(bc2) + eps), the bias
    corrections multiplied by their reciprocals as in adam_rule."""
    m1 = s[0] * h.beta1 + g * h.one_minus_beta1
    m2 = s[1] * h.beta3 + g * h.one_minus_beta3
    nu = s[2] * h.beta2 + g * g * h.one_minus_beta2
    return ((m1 * _inv(h.bias_correction1) + h.alpha * m2) / (_sqrt(nu) * _inv(h.bias_correction2_sqrt) + h.eps),
            [m1, m2, nu])


RULES: dict[str, Callable] = {
    "adam": adam_rule, "lamb": lamb_rule, "momentum": momentum_rule, "rmsprop": rmsprop_rule,
    "adagrad": adagrad_rule, "lion": lion_rule, "ademamix": ademamix_rule,
}
STATE_COUNTS: dict[str, tuple[int, ...]] = {
    "adam": (2,), "lamb": (2,), "momentum": (0, 1), "rmsprop": (1,), "adagrad": (1,), "lion": (1,),
    "ademamix": (3,),
}


# ---------------------------------------------------------------- the reference step
def compute_dtype(p: torch.Tensor) -> torch.dtype:
    """float64 for float64 parameters, else float32."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _chunks(n: int, blocksize: int):
    """(start, stop, width) of runs of whole blocks (about CHUNK_ELEMENTS values), then the partial last block."""
    nfull = n // blocksize
    step = max(1, CHUNK_ELEMENTS // blocksize) * blocksize
    for lo in range(0, nfull * blocksize, step):
        yield lo, min(nfull * blocksize, lo + step), blocksize
    if n % blocksize:
        yield nfull * blocksize, n, n - nfull * blocksize


def check_op_scalars(wd_mode: int, blocksizes: list[int]) -> None:
    """What a raw op call (which bypasses the public functions' checks) must not get wrong before a kernel or the
    reference runs: a known weight-decay mode and positive block sizes. ValueError otherwise."""
    if wd_mode not in (WD_NONE, WD_L2, WD_DECOUPLED) or any(bs < 1 for bs in blocksizes):
        raise ValueError(f"blocksizes must be positive and wd_mode 0, 1 or 2, got {list(blocksizes)} and {wd_mode}")


def _steps(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, write, skipped=None):
    check_op_scalars(wd_mode, [blocksize])
    fn = RULES[rule]
    cd = compute_dtype(p)
    h = _scalars(hyper, cd, p.device)
    eight = len(absmaxes) > 0
    cbs = [codebook(c) for c in codes] if eight else []
    pf, gf = p.view(-1), g.view(-1)
    flats = [s.view(-1) for s in states]
    total = torch.zeros(2, dtype=torch.float64, device=p.device)  # (norm op) squares of direction, parameter
    for lo, hi, width in _chunks(pf.numel(), blocksize):
        nb = (hi - lo) // width
        b0 = lo // blocksize
        p32 = pf[lo:hi].view(nb, width).to(cd)
        g32 = gf[lo:hi].view(nb, width).to(cd) * h.grad_scale
        if wd_mode == WD_L2:
            g32 = torch.addcmul(g32, p32, h.weight_decay)  # one rounding, as torch.optim's grad.add(p, alpha=wd)
        if eight:
            s32 = [(cb.values[f[lo:hi].view(nb, width).long()] * a[b0 : b0 + nb].unsqueeze(1)).to(cd)
                   for f, a, cb in zip(flats, absmaxes, cbs)]
        else:
            s32 = [f[lo:hi].view(nb, width).to(cd) for f in flats]
        d, new = fn(g32, p32, s32, h)
        if not write:
            total[0] += d.double().square().sum()  # exact squares; a float64 sum (the native kernel's too)
            total[1] += p32.double().square().sum()
            continue
        keep = None  # (nb, 1): the blocks that step (all of them unless skipped is given)
        if skipped is not None:  # a finite gradient, and finite new 8-bit states (a finite gradient's square may
            # overflow: the block's scale would be Inf and each of its codes NaN from the next step on)
            keep = torch.isfinite(gf[lo:hi].view(nb, width)).all(dim=1, keepdim=True)
            for s in new if eight else ():
                keep = keep & torch.isfinite(s).all(dim=1, keepdim=True)
            skipped += (~keep).sum()
        for i, (f, s) in enumerate(zip(flats, new)):
            old = f[lo:hi].view(nb, width)
            if eight:
                q, a = quantize_blocks(s.float(), cbs[i], seeds[i], lo, floor=not cbs[i].signed)
                if keep is not None:
                    q, a = torch.where(keep, q, old), torch.where(keep[:, 0], a, absmaxes[i][b0 : b0 + nb])
                f[lo:hi] = q.reshape(-1)
                absmaxes[i][b0 : b0 + nb] = a
            else:
                f[lo:hi] = (s if keep is None else torch.where(keep, s.to(f.dtype), old)).reshape(-1).to(f.dtype)
        if wd_mode == WD_DECOUPLED:
            p32 = p32 * (1 - h.lr * h.weight_decay)
        new_p = (p32 - (h.lr * h.update_scale) * d).to(p.dtype)
        pf[lo:hi] = (new_p if keep is None else torch.where(keep, new_p, pf[lo:hi].view(nb, width))).reshape(-1)
    return total.float()


@ops.reference("optimizer_update")
def optimizer_update_reference(rule: str, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor],
                               absmaxes: list[torch.Tensor], codes: list[torch.Tensor], hyper: list[float],
                               wd_mode: int, blocksize: int, seeds: list[int],
                               skipped: torch.Tensor | None = None) -> None:
    """Reference of the ``optimizer_update`` op: one step of ``rule`` in place on ``p`` and its ``states``
    (blocks whose gradient holds a NaN/Inf, or whose new 8-bit states are not all finite, left as they are and
    counted in ``skipped`` when it is given)."""
    _steps(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, True, skipped)


def split_many(ps: list, gs: list, states: list, absmaxes: list, codes: list, hypers: list, blocksizes: list,
               seeds: list, skipped: list):
    """Per-parameter argument tuples (p, g, states, absmaxes, codes, hyper, blocksize, seeds, skipped) of
    ``optimizer_update_many``'s flat lists; ValueError if their lengths disagree (checked before the first)."""
    n, nh = len(ps), len(FIELDS)
    k = len(states) // n if n else 0
    if (len(gs) != n or len(blocksizes) != n or len(states) != n * k or len(absmaxes) not in (0, n * k)
            or len(codes) != len(absmaxes) or len(hypers) != n * nh or len(seeds) != n * k
            or len(skipped) not in (0, n)):
        raise ValueError(f"optimizer_update_many: for {n} parameters with {k} states each, states, absmaxes/codes "
                         f"(8-bit) and seeds need {n * k} entries, hypers {n * nh}, skipped 0 or {n}; got "
                         f"{len(states)}, {len(absmaxes)}/{len(codes)}, {len(seeds)}, {len(hypers)}, {len(skipped)}")
    for i in range(n):
        yield (ps[i], gs[i], states[i * k : (i + 1) * k], absmaxes[i * k : (i + 1) * k] if absmaxes else [],
               codes[i * k : (i + 1) * k] if codes else [], hypers[i * nh : (i + 1) * nh], blocksizes[i],
               seeds[i * k : (i + 1) * k], skipped[i] if skipped else None)


@ops.reference("optimizer_update_many")
def optimizer_update_many_reference(rule: str, ps: list[torch.Tensor], gs: list[torch.Tensor],
                                    states: list[torch.Tensor], absmaxes: list[torch.Tensor],
                                    codes: list[torch.Tensor], hypers: list[float], wd_mode: int,
                                    blocksizes: list[int], seeds: list[int], skipped: list[torch.Tensor]) -> None:
    """Reference of the ``optimizer_update_many`` op: ``optimizer_update``'s reference for each parameter."""
    for p, g, s, a, c, h, bs, sd, sk in split_many(ps, gs, states, absmaxes, codes, hypers, blocksizes, seeds,
                                                     skipped):
        _steps(rule, p, g, s, a, c, h, wd_mode, bs, sd, True, sk)


@ops.reference("optimizer_update_norm")
def optimizer_update_norm_reference(rule: str, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor],
                                    absmaxes: list[torch.Tensor], codes: list[torch.Tensor], hyper: list[float],
                                    wd_mode: int, blocksize: int) -> torch.Tensor:
    """Reference of the ``optimizer_update_norm`` op: the squared norms of the step's direction and of the
    parameter (float32, shape (2,)), nothing written; the squares summed in float64 and each sum rounded once."""
    return _steps(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, [], False)


# ---------------------------------------------------------------- public functions
def _check_wd_mode(wd_mode) -> None:
    if isinstance(wd_mode, bool) or wd_mode not in (WD_NONE, WD_L2, WD_DECOUPLED):
        raise ValueError(f"wd_mode must be WD_NONE (0), WD_L2 (1) or WD_DECOUPLED (2), got {wd_mode!r}")


def _check_update_args(rule, p, g, states, absmaxes, codes, blocksize) -> None:
    # written for speed as well: an optimizer step checks every parameter's arguments (a model's hundred tensors)
    if type(blocksize) is not int and (isinstance(blocksize, bool) or not hasattr(type(blocksize), "__index__")):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__}")  # ints, numpy's integers
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    counts = STATE_COUNTS.get(rule)
    if counts is None:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    if len(states) not in counts:
        raise ValueError(f"rule {rule!r} takes {' or '.join(map(str, counts))} states, got {len(states)}")
    shape = p.shape
    if g.shape != shape or g.device != p.device:
        raise ValueError(f"g must match p in shape and device, got {tuple(g.shape)} on {g.device} for "
                         f"{tuple(shape)} on {p.device}")
    if len(absmaxes) not in (0, len(states)) or len(codes) != len(absmaxes):
        raise ValueError("absmaxes and codes must be empty (32-bit states) or one per state (8-bit states)")
    want = torch.uint8 if absmaxes else (torch.float64 if p.dtype == torch.float64 else torch.float32)
    nblocks = -(-p.numel() // blocksize)
    for i, s in enumerate(states):
        if s.shape != shape or s.dtype != want or not s.is_contiguous():
            raise ValueError(f"states[{i}] must be contiguous {want} of shape {tuple(shape)}, got {s.dtype} "
                             f"{tuple(s.shape)}")
        if absmaxes and (absmaxes[i].shape != (nblocks,) or absmaxes[i].dtype != torch.float32):
            raise ValueError(f"absmaxes[{i}] must be float32 of shape ({nblocks},)")


def _check_step_args(rule, p, g, states, absmaxes, codes, blocksize, seeds, skipped) -> None:
    """The checks of one parameter's :func:`optimizer_update` (ValueError)."""
    _check_update_args(rule, p, g, states, absmaxes, codes, blocksize)
    if len(seeds) != len(states):
        raise ValueError(f"seeds must have one entry per state, got {len(seeds)} for {len(states)} states")
    if skipped is not None and (not isinstance(skipped, torch.Tensor) or skipped.dtype != torch.int64
                                or skipped.numel() != 1 or skipped.device != p.device):
        got = (f"{skipped.dtype} of shape {tuple(skipped.shape)} on {skipped.device}"
               if isinstance(skipped, torch.Tensor) else type(skipped).__name__)
        raise ValueError(f"skipped must be None or an int64 tensor of one element on {p.device}, got {got}")


def optimizer_update(rule: str, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor],
                     absmaxes: list[torch.Tensor], codes: list[torch.Tensor], hyper: OptimHyper, *,
                     wd_mode: int, blocksize: int, seeds: list[int], skipped: torch.Tensor | None = None) -> None:
    """One step of ``rule`` (see ``RULES``) on contiguous parameter ``p`` with gradient ``g``, in place.

    ``states``: the rule's states, uint8 codes (8-bit: ``absmaxes`` float32 (ceil(numel / blocksize),) and
    ``codes`` 256-entry code maps, one per state) or float32 (float64 for float64 ``p``; ``absmaxes`` and
    ``codes`` empty). ``seeds[i] >= 0`` rounds 8-bit state i stochastically with that seed, ``-1`` to nearest.
    ``skipped``: None (a NaN/Inf in ``g`` reaches the parameter and flags its states' blocks), or an int64 tensor
    of one element on ``p``'s device: each block of ``blocksize`` values (the last may be shorter; 32-bit states
    too) whose gradient holds a NaN/Inf, or (8-bit states) whose new states are not all finite (a finite gradient
    whose square overflows: the block's scale would be Inf), is left untouched, parameter and states, and
    ``skipped`` grows by their number. The check rides on the update itself (no extra pass over the gradient).
    Raises ValueError for an unknown rule, mismatched states or a malformed ``skipped``."""
    _check_wd_mode(wd_mode)
    _check_step_args(rule, p, g, states, absmaxes, codes, blocksize, seeds, skipped)
    ops.optimizer_update(rule, p, g.contiguous(), states, absmaxes, codes, hyper.as_list(), wd_mode, blocksize,
                         [int(s) for s in seeds], skipped)


def optimizer_update_many(rule: str, ps: list[torch.Tensor], gs: list[torch.Tensor], states: list[list[torch.Tensor]],
                          absmaxes: list[list[torch.Tensor]], codes: list[list[torch.Tensor]],
                          hypers: list[OptimHyper], *, wd_mode: int, blocksizes: list[int], seeds: list[list[int]],
                          skipped: list[torch.Tensor] | None = None) -> None:
    """:func:`optimizer_update` for several parameters in one op call (one dispatch instead of one per parameter:
    ~10 us each), with the same ``rule`` and ``wd_mode``; every other argument is one entry per parameter
    (``states[i]``, ``absmaxes[i]``, ... as in :func:`optimizer_update`; all parameters with 8-bit states, or all
    with 32-bit ones, and the same number of states). ``skipped``: None, or one counter per parameter.
    Every argument is checked (:func:`check_update_many`) before any parameter is touched: a ValueError
    (TypeError for a malformed code map) names the parameter's position and leaves all of them unchanged."""
    _check_wd_mode(wd_mode)
    check_update_many(rule, ps, gs, states, absmaxes, codes, hypers, blocksizes, seeds, skipped)
    dispatch_update_many(rule, ps, gs, states, absmaxes, codes, hypers, wd_mode, blocksizes, seeds, skipped)


def check_update_many(rule: str, ps: list, gs: list, states: list, absmaxes: list, codes: list, hypers: list,
                      blocksizes: list, seeds: list, skipped: list | None) -> None:
    """The checks of :func:`optimizer_update_many` (arguments as there), code maps included, without the step."""
    n = len(ps)
    lists = {"gs": gs, "states": states, "absmaxes": absmaxes, "codes": codes, "hypers": hypers,
             "blocksizes": blocksizes, "seeds": seeds}
    if skipped is not None:
        lists["skipped"] = skipped
    for name, v in lists.items():
        if len(v) != n:
            raise ValueError(f"{name} must have one entry per parameter ({n}), got {len(v)}")
    if n == 0:
        return
    k, eight = len(states[0]), bool(absmaxes[0])
    maps = set()  # ids of the code maps already validated (an optimizer's parameters share two)
    for i in range(n):
        if len(states[i]) != k or bool(absmaxes[i]) != eight:
            raise ValueError(f"parameter {i}: every parameter must have {k} states, "
                             f"{'8-bit' if eight else '32-bit'} like the first")
        try:
            _check_step_args(rule, ps[i], gs[i], states[i], absmaxes[i], codes[i], blocksizes[i], seeds[i],
                             None if skipped is None else skipped[i])
            for c in codes[i]:
                if id(c) not in maps:
                    codebook(c)  # cached on the tensor: the kernel's own lookup then cannot fail half-way
                    maps.add(id(c))
        except ValueError as e:
            raise ValueError(f"parameter {i}: {e}") from None


def dispatch_update_many(rule: str, ps: list, gs: list, states: list, absmaxes: list, codes: list, hypers: list,
                         wd_mode: int, blocksizes: list, seeds: list, skipped: list | None) -> None:
    """The ``optimizer_update_many`` op on checked arguments (:func:`check_update_many`), flattened."""
    flat = lambda xs: [t for x in xs for t in x]  # noqa: E731
    ops.optimizer_update_many(rule, ps, [g.contiguous() for g in gs], flat(states), flat(absmaxes), flat(codes),
                              [v for h in hypers for v in h.as_list()], wd_mode, [int(b) for b in blocksizes],
                              [int(s) for sd in seeds for s in sd], list(skipped) if skipped is not None else [])


def optimizer_update_norm(rule: str, p: torch.Tensor, g: torch.Tensor, states: list[torch.Tensor],
                          absmaxes: list[torch.Tensor], codes: list[torch.Tensor], hyper: OptimHyper, *,
                          wd_mode: int, blocksize: int) -> torch.Tensor:
    """The squared norms of the direction :func:`optimizer_update` would step along and of the parameter, as a
    float32 tensor of shape (2,), with nothing written (for update-norm caps and trust ratios: one pass gives
    both). Arguments as there."""
    _check_wd_mode(wd_mode)
    _check_update_args(rule, p, g, states, absmaxes, codes, blocksize)
    return ops.optimizer_update_norm(rule, p, g.contiguous(), states, absmaxes, codes, hyper.as_list(), wd_mode,
                                     blocksize)
