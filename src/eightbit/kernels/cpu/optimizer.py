"""Native CPU kernels of the ``optimizer_update``, ``optimizer_update_many`` and ``optimizer_update_norm`` ops
(csrc/optim_cpu.c). 8-bit states (``eb_optim_many``): per block, dequantize the states, apply the rule, write the
parameter and requantize, in one pass over L1-resident data; the full blocks of all parameters of one op call (per
block size) in one parallel region, each thread a contiguous run of the concatenated blocks, and a partial last
block as a call of its own. 32-bit states (``eb_optim_f32_many``: small tensors under ``min_8bit_size``, the 32-bit
classes): the rule in place on them, all parameters of one op call in one foreign call. The update norm
(``eb_optim_norm``: LAMB's and LARS's trust ratios, ``max_unorm``): the same decode and rule with the direction
squared and summed in double instead of written. Which rules it serves is the explicit table ``NATIVE_RULES``
(every rule of ``eightbit.functional.optimizer``; SGD without momentum, which has no state, runs the reference).
Parameters and gradients may each be float32,
bfloat16 or float16: the kernel widens a low-precision block into float32 scratch, steps it there and rounds the
parameter back (csrc/lowp.h, the casts' results), which is the reference's arithmetic. It declines (the reference
runs) for float64 parameters or gradients, 32-bit states that are not float32, non-contiguous parameters, block
sizes above 4096 and codes without native tables.
States are bit-identical to the reference (tests/kernels/test_native_cpu.py, test_native_optim_many.py).
"""
from __future__ import annotations

import ctypes
from array import array

import torch

from ...functional.codes import codebook
from ...functional.optimizer import FIELDS, check_op_scalars, optimizer_update_reference, split_many
from ..registry import register
from . import native
from .tables import Lut, native_tables

# rule name -> the C kernel's rule id (enum in csrc/optim_cpu.c)
NATIVE_RULES = {"adam": 0, "lamb": 1, "momentum": 2, "rmsprop": 3, "adagrad": 4, "lion": 5, "ademamix": 6}
_MAX_STATES = 3  # EB_MAX_STATES: the descriptors hold three states' fields (a rule with fewer repeats its last)


class Hyper(ctypes.Structure):
    """ctypes mirror of ``eb_hyper_t``: the fields of ``OptimHyper`` in order, as float32."""

    _fields_ = [(name, ctypes.c_float) for name in FIELDS]


def _available() -> bool:
    lib = native.library()
    if lib is None:
        return False
    # a struct layout that disagrees with the C side would read garbage: refuse the kernel instead
    return (lib.eb_hyper_size() == ctypes.sizeof(Hyper) and lib.eb_lut_size() == ctypes.sizeof(Lut)
            and lib.eb_optim_desc_fields() == _DESC_FIELDS and lib.eb_optim_f32_fields() == _F32_FIELDS)


_DESC_FIELDS = 19  # eb_optim_many's fields per part (checked against eb_optim_desc_fields in _available)
_F32_FIELDS = 10  # eb_optim_f32_many's (eb_optim_f32_fields)
# parameter / gradient dtype -> (the kernel's dtype code, csrc/lowp.h; bytes per value)
_DTYPES = {torch.float32: (0, 4), torch.bfloat16: (1, 2), torch.float16: (2, 2)}


class _Parts:
    """The native calls of a set of updates with one rule, state count and skip flag: each 8-bit parameter's full
    blocks as one part of an ``eb_optim_many`` call per block size (one parallel region for all of them), its
    partial last block as an ``eb_optim_many`` call of its own (one block of its length), the 32-bit parameters as one
    ``eb_optim_f32_many`` call. Descriptors are int64 arrays of addresses; the objects they point to (ctypes
    hyperparameters, contiguous copies made by the caller) are held until ``run`` returns."""

    def __init__(self, rule: str, wd_mode: int, nstates: int, skip: bool) -> None:
        self.rule, self.wd_mode, self.k, self.skip = NATIVE_RULES[rule], wd_mode, nstates, int(skip)
        self.full: dict[int, tuple[array, list]] = {}  # block size -> (descriptor, each part's skipped counter)
        self.tails: list[tuple[int, array, torch.Tensor | None]] = []  # (length, descriptor, skipped counter)
        self.f32, self.f32_skipped = array("q"), []
        self.hypers: dict[tuple, Hyper] = {}  # a group's parameters mostly share one step's values: one struct
        self.luts: dict[int, int | None] = {}  # id(code map) -> its native tables' address (None: not served)
        self.keep: list = []

    def _hyper(self, hyper) -> int:
        key = tuple(hyper)
        h = self.hypers.get(key)
        if h is None:
            h = self.hypers[key] = Hyper(*key)
        return ctypes.addressof(h)

    def add(self, p, g, states, absmaxes, codes, hyper, blocksize, seeds, skipped) -> bool:
        """Adds one parameter's update (8-bit states when ``absmaxes``, else 32-bit); False (nothing added) where
        the kernel declines it."""
        k, n = self.k, p.numel()
        taken = _layout(p, g, states, absmaxes, blocksize) if len(states) == k else None
        if taken is None:
            return False
        pt, gt = taken
        if not absmaxes:
            self.keep += [p, g, *states]
            self.f32.extend((p.data_ptr(), g.data_ptr(), *_pad([s.data_ptr() for s in states]), self._hyper(hyper),
                             n, blocksize, pt[0], gt[0]))
            self.f32_skipped.append(skipped)
            return True
        luts = [self._lut(c) for c in codes]
        if None in luts:
            return False
        self.keep += [p, g, *states, *absmaxes]
        # pointers as plain integers; a rule with fewer than three states repeats its last (unused there)
        qs, amaxes = _pad([s.data_ptr() for s in states]), _pad([a.data_ptr() for a in absmaxes])
        pp, gp, hp = p.data_ptr(), g.data_ptr(), self._hyper(hyper)
        nfull = n // blocksize
        if nfull:  # fields in the order of the C enum D_*
            desc, skips = self.full.setdefault(blocksize, (array("q"), []))
            desc.extend((pp, gp, *qs, *amaxes, *_pad(luts), hp, *_pad(list(seeds)), 0, nfull, pt[0], gt[0]))
            skips.append(skipped)
        if n % blocksize:  # the partial last block: its own call, its draws keyed on its place (first = t)
            t, b = nfull * blocksize, 4 * nfull
            desc = array("q", (pp + pt[1] * t, gp + gt[1] * t, *(q + t for q in qs), *(a + b for a in amaxes),
                               *_pad(luts), hp, *_pad(list(seeds)), t, 1, pt[0], gt[0]))
            self.tails.append((n - t, desc, skipped))
        return True

    def _lut(self, c: torch.Tensor) -> int | None:
        """_lut_address of code map ``c``, looked up once per call."""
        lut = self.luts.get(id(c), False)
        if lut is False:
            lut = self.luts[id(c)] = _lut_address(c)
        return lut

    def run(self) -> None:
        """Makes the calls; adds each parameter's skipped blocks to its counter."""
        lib = native.library()
        for bs, (desc, skips) in self.full.items():
            nskip = array("q", bytes(8 * len(skips)))
            if lib.eb_optim_many(self.rule, self.k, self.wd_mode, bs, self.skip, len(skips), desc.buffer_info()[0],
                                 nskip.buffer_info()[0]):
                raise MemoryError("eb_optim_many: could not allocate its part list")
            _count(skips, nskip)
        for length, desc, skipped in self.tails:
            nskip = array("q", [0])
            if lib.eb_optim_many(self.rule, self.k, self.wd_mode, length, self.skip, 1, desc.buffer_info()[0],
                                 nskip.buffer_info()[0]):
                raise MemoryError("eb_optim_many: could not allocate its part list")
            _count([skipped], nskip)
        if self.f32_skipped:
            nskip = array("q", bytes(8 * len(self.f32_skipped)))
            lib.eb_optim_f32_many(self.rule, self.k, self.wd_mode, self.skip, len(self.f32_skipped),
                                  self.f32.buffer_info()[0], nskip.buffer_info()[0])
            _count(self.f32_skipped, nskip)


def _layout(p, g, states, absmaxes, blocksize: int) -> tuple | None:
    """(p's, g's dtype entry of _DTYPES) where the kernel takes these tensors as they lie, else None: p and g of a
    served dtype, contiguous and of equal size, a block size within the scratch; states contiguous of p's size,
    uint8 with one contiguous float32 absmax per block and state (8-bit: ``absmaxes`` given) or float32 (read
    and written by pointer: anything but this layout is declined)."""
    pt, gt, n = _DTYPES.get(p.dtype), _DTYPES.get(g.dtype), p.numel()
    if (blocksize > native.MAX_BLOCK or pt is None or gt is None or not p.is_contiguous() or not g.is_contiguous()
            or g.numel() != n):
        return None
    want = torch.uint8 if absmaxes else torch.float32
    if any(s.dtype != want or not s.is_contiguous() or s.numel() != n for s in states):
        return None
    if absmaxes:
        nb = -(-n // blocksize)
        if len(absmaxes) != len(states) or any(
                a.dtype != torch.float32 or not a.is_contiguous() or a.numel() != nb for a in absmaxes):
            return None
    return pt, gt


def _lut_address(c: torch.Tensor) -> int | None:
    """The address of code map ``c``'s native tables, None where it has none."""
    t = native_tables(codebook(c))  # cached on the code map, which outlives the call
    return None if t is None else ctypes.addressof(t.lut)


def _pad(xs: list) -> list:
    """``xs`` (one entry per state) with its last entry repeated up to three (the descriptors' state fields)."""
    return xs + xs[-1:] * (_MAX_STATES - len(xs))


def _count(counters: list, nskip: array) -> None:
    for skipped, bad in zip(counters, nskip):
        if bad:
            skipped += bad


@register("optimizer_update", "cpu", available=_available)
def optimizer_update_cpu(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, skipped=None):
    """Kernel of ``optimizer_update`` for 8-bit or float32 states of float32, bfloat16 or float16 parameters (see
    the module docstring)."""
    check_op_scalars(wd_mode, [blocksize])
    if native.library() is None or rule not in NATIVE_RULES or not states:
        return NotImplemented
    parts = _Parts(rule, wd_mode, len(states), skipped is not None)
    if not parts.add(p, g.contiguous(), states, absmaxes, codes, hyper, blocksize, seeds, skipped):
        return NotImplemented
    parts.run()
    return None


@register("optimizer_update_many", "cpu", available=_available)
def optimizer_update_many_cpu(rule, ps, gs, states, absmaxes, codes, hypers, wd_mode, blocksizes, seeds, skipped):
    """Kernel of ``optimizer_update_many``: the updates the kernel takes as native calls made together (one parallel
    region over all 8-bit blocks, one call for all 32-bit states), the others one by one (``optimizer_update_cpu``,
    or the reference where it declines). A parameter passed twice has its earlier updates run before its next one;
    parameters that only overlap in memory (different views of one storage) are not supported, as in torch's fused
    optimizers."""
    check_op_scalars(wd_mode, blocksizes)
    parts, pending = None, set()
    for p, g, s, a, c, h, bs, sd, sk in split_many(ps, gs, states, absmaxes, codes, hypers, blocksizes, seeds,
                                                     skipped):
        if p.data_ptr() in pending:  # the same parameter twice: its earlier updates run first, as one by one
            parts.run()
            parts, pending = None, set()
        if rule in NATIVE_RULES and s:
            parts = parts or _Parts(rule, wd_mode, len(s), sk is not None)
            if parts.k == len(s) and parts.skip == (sk is not None) and parts.add(p, g, s, a, c, h, bs, sd, sk):
                pending.add(p.data_ptr())
                continue
        if optimizer_update_cpu(rule, p, g, s, a, c, h, wd_mode, bs, sd, sk) is NotImplemented:
            optimizer_update_reference(rule, p, g, s, a, c, h, wd_mode, bs, sd, sk)
    if parts is not None:
        parts.run()
    return None


@register("optimizer_update_norm", "cpu", available=_available)
def optimizer_update_norm_cpu(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize):
    """Kernel of ``optimizer_update_norm`` (``eb_optim_norm``): the squared norms of the step's direction and of the
    parameter, float32 (2,), for the parameters, gradients and states ``optimizer_update_cpu`` takes. Both sum the
    exact squares in double, in different orders: each result within an ulp of the reference's."""
    check_op_scalars(wd_mode, [blocksize])
    taken = None
    if native.library() is not None and rule in NATIVE_RULES and states:
        taken = _layout(p, g, states, absmaxes, blocksize)
    if taken is None:
        return NotImplemented
    (pt, gt), n, eight = taken, p.numel(), bool(absmaxes)
    luts = [_lut_address(c) for c in codes] if eight else [0] * len(states)
    if None in luts:
        return NotImplemented
    if n == 0:
        return torch.zeros(2, dtype=torch.float32)
    h = Hyper(*hyper)
    amaxes = [a.data_ptr() for a in absmaxes] if eight else [0]
    desc = array("q", (p.data_ptr(), g.data_ptr(), *_pad([s.data_ptr() for s in states]), *_pad(amaxes),
                       *_pad(luts), ctypes.addressof(h), 0, 0, 0, 0, 0, pt[0], gt[0]))
    bs = blocksize if eight else 2048  # 32-bit states: any run length (the sum's grouping only)
    out = array("d", [0.0, 0.0])
    native.library().eb_optim_norm(NATIVE_RULES[rule], len(states), wd_mode, bs, int(eight), n, desc.buffer_info()[0],
                                   out.buffer_info()[0])
    return torch.tensor(out.tolist(), dtype=torch.float32)
