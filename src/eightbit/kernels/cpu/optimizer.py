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
from ...functional.optimizer import FIELDS
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
def optimizer_update_cpu(rule, p, g, states, absmaxes, codes, hyper, wd_mode, blocksize, seeds):
    """Kernel of ``optimizer_update`` for 8-bit or float32 states of float32 parameters (see the module docstring)."""
    k = len(states)
    lib = native.library()
    if (lib is None or rule not in NATIVE_RULES or k not in (1, 2) or blocksize > native.MAX_BLOCK
            or p.dtype != torch.float32 or g.dtype != torch.float32 or not p.is_contiguous()):
        return NotImplemented
    if not absmaxes:  # 32-bit states: the rule in place on them (small tensors under min_8bit_size, 32-bit classes)
        if not all(s.dtype == torch.float32 and s.is_contiguous() and s.numel() == p.numel() for s in states):
            return NotImplemented
        g = g.contiguous()
        lib.eb_optim_f32(NATIVE_RULES[rule], p.data_ptr(), g.data_ptr(), states[0].data_ptr(),
                         states[1].data_ptr() if k == 2 else None, ctypes.byref(Hyper(*hyper)), wd_mode, p.numel())
        return None
    tables = [native_tables(codebook(c)) for c in codes]
    if any(t is None for t in tables) or not all(a.is_contiguous() for a in absmaxes):
        return NotImplemented
    g = g.contiguous()
    n = p.numel()
    nfull = n // blocksize
    h = Hyper(*hyper)
    luts = (Lut * k)(*[t.lut for t in tables])
    seed_arr = (ctypes.c_int64 * k)(*seeds)

    def run(first: int, nblocks: int, width: int) -> None:
        q = (ctypes.c_void_p * k)(*[s.data_ptr() + first for s in states])
        a = (ctypes.c_void_p * k)(*[m.data_ptr() + 4 * (first // blocksize) for m in absmaxes])
        lib.eb_optim_blocks(NATIVE_RULES[rule], p.data_ptr() + 4 * first, g.data_ptr() + 4 * first, k, q, a, luts,
                            ctypes.byref(h), wd_mode, seed_arr, first, nblocks, width)

    if nfull:
        run(0, nfull, blocksize)
    if n % blocksize:
        run(nfull * blocksize, 1, n - nfull * blocksize)
    return None
