"""Native CPU kernel of the ``optimizer_update`` op (csrc/optim_cpu.c). 8-bit states (``eb_optim_blocks``): per
block, dequantize the states, apply the rule, write the parameter and requantize, in one pass over L1-resident
data. 32-bit states (``eb_optim_f32``: small tensors under ``min_8bit_size``, the 32-bit classes): the rule in
place on them. Which rules it serves is the explicit table ``NATIVE_RULES`` (every rule of
``eightbit.functional.optimizer`` with one or two states; AdEMAMix's three and SGD without momentum run the
reference); it declines (the reference runs) for parameters, gradients or 32-bit states other than float32,
block sizes above 4096 and codes without native tables.
States are bit-identical to the reference (tests/kernels/test_native_cpu.py).
"""
from __future__ import annotations

import ctypes

import torch

from ...functional.codes import codebook
from ...functional.optimizer import FIELDS, optimizer_update_reference, split_many
from ..registry import register
from . import native
from .tables import Lut, native_tables

# rule name -> the C kernel's rule id (enum in csrc/optim_cpu.c)
NATIVE_RULES = {"adam": 0, "lamb": 1, "momentum": 2, "rmsprop": 3, "adagrad": 4, "lion": 5}


class Hyper(ctypes.Structure):
    """ctypes mirror of ``eb_hyper_t``: the fields of ``OptimHyper`` in order, as float32."""

    _fields_ = [(name, ctypes.c_float) for name in FIELDS]


def _available() -> bool:
    lib = native.library()
    if lib is None:
        return False
    # a struct layout that disagrees with the C side would read garbage: refuse the kernel instead
    return lib.eb_hyper_size() == ctypes.sizeof(Hyper) and lib.eb_lut_size() == ctypes.sizeof(Lut)


@register("optimizer_update", "cpu", available=_available)
def optimizer_update_cpu(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds, skipped=None):
    """Kernel of ``optimizer_update`` for 8-bit or float32 states of float32 parameters (see the module docstring)."""
    k = len(states)
    lib = native.library()
    if (lib is None or rule not in NATIVE_RULES or k not in (1, 2) or blocksize > native.MAX_BLOCK
            or p.dtype != torch.float32 or g.dtype != torch.float32 or not p.is_contiguous()):
        return NotImplemented
    skip = int(skipped is not None)
    if not absmaxes:  # 32-bit states: the rule in place on them (small tensors under min_8bit_size, 32-bit classes)
        if not all(s.dtype == torch.float32 and s.is_contiguous() and s.numel() == p.numel() for s in states):
            return NotImplemented
        g = g.contiguous()
        n = lib.eb_optim_f32(NATIVE_RULES[rule], p.data_ptr(), g.data_ptr(), states[0].data_ptr(),
                             states[1].data_ptr() if k == 2 else None, ctypes.byref(Hyper(*hyper)), wd_mode,
                             p.numel(), blocksize, skip)
        if n:
            skipped += n
        return None
    tables = [native_tables(codebook(c)) for c in codes]
    if any(t is None for t in tables) or not all(a.is_contiguous() for a in absmaxes):
        return NotImplemented
    g = g.contiguous()
    n = p.numel()
    nfull = n // blocksize
    h = ctypes.byref(Hyper(*hyper))
    # pointers as plain integers (the second state's repeat the first's for one-state rules: unused there)
    luts = [ctypes.addressof(t.lut) for t in tables] * (3 - k)
    qs, ams = [s.data_ptr() for s in states] * (3 - k), [m.data_ptr() for m in absmaxes] * (3 - k)
    sds = list(seeds) * (3 - k)
    pp, gp = p.data_ptr(), g.data_ptr()

    def run(first: int, nblocks: int, width: int) -> int:
        b = 4 * (first // blocksize)
        return lib.eb_optim_blocks(NATIVE_RULES[rule], pp + 4 * first, gp + 4 * first, k, qs[0] + first,
                                   qs[1] + first, ams[0] + b, ams[1] + b, luts[0], luts[1], h, wd_mode, sds[0],
                                   sds[1], first, nblocks, width, skip)

    bad = run(0, nfull, blocksize) if nfull else 0
    if n % blocksize:
        bad += run(nfull * blocksize, 1, n - nfull * blocksize)
    if bad:
        skipped += bad
    return None


@register("optimizer_update_many", "cpu", available=_available)
def optimizer_update_many_cpu(rule, ps, gs, states, absmaxes, codes, hypers, wd_mode, blocksizes, seeds, skipped):
    """Kernel of ``optimizer_update_many``: ``optimizer_update_cpu`` for each parameter (the reference for one it
    declines), in one op call."""
    for p, g, s, a, c, h, bs, sd, sk in split_many(ps, gs, states, absmaxes, codes, hypers, blocksizes, seeds,
                                                     skipped):
        if optimizer_update_cpu(rule, p, g, s, a, c, h, wd_mode, bs, sd, sk) is NotImplemented:
            optimizer_update_reference(rule, p, g, s, a, c, h, wd_mode, bs, sd, sk)
    return None
