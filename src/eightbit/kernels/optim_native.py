"""Native CPU kernel of the whole 8-bit Adam/AdamW update (``eb_adam8_blocks`` in csrc/blockwise_cpu.c):
per block, dequantize m and v, the 32-bit Adam step, the parameter write and the requantization of both
states in one pass over L1-resident data. Bit-identical to `eightbit.optim.base.update_chunk` with
`eightbit.optim.adam.adam_rule` (tests/kernels/test_native_cpu.py).
"""
from __future__ import annotations

import torch

from . import native_cpu
from .blockwise_cpu import packed_args
from .dispatch import register_kernel

_HP_LEN = 11  # LR, WD, GRAD_SCALE, UPDATE_SCALE, b1, 1-b1, b2, 1-b2, eps, bc1, sqrt(bc2)


def _usable(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


@register_kernel("optim_adam8bit_update", "cpu")
def adam8bit_update(p, g, states, absmaxes, codes, hp, wd_mode: int, seeds: list[int]) -> bool:
    """Adam update of full blocks in place. p, g: (nb, bs) float32; states: [m, v] (nb, bs) uint8;
    absmaxes: [(nb,), (nb,)] float32; codes: [(code, mid, zero_idx, (table, midp, k)), ...];
    hp: float32 (11,); seeds: per state, -1 for round-to-nearest. Returns False (nothing done) when the
    inputs do not fit this kernel (dtypes, layout, a code without lookup table, no native library)."""
    lib = native_cpu.library()
    if lib is None or len(states) != 2 or hp.numel() != _HP_LEN or any(c is None or c[3] is None for c in codes):
        return False
    if p.dtype != torch.float32 or g.dtype != torch.float32 or p.shape[1] > 4096:
        return False
    if not _usable(p, g, *states, *absmaxes, hp) or any(s.dtype != torch.uint8 for s in states):
        return False
    nb, bs = p.shape
    (qm, qv), (am, av) = states, absmaxes
    cm, cv = [(c[0].contiguous(), c[2], *c[3]) for c in codes]  # (code, zero_idx, table, midp, k)
    hp = hp.contiguous()
    ptr = native_cpu.ptr
    lib.eb_adam8_blocks(
        ptr(p), ptr(g), ptr(qm), ptr(am), ptr(qv), ptr(av),
        ptr(cm[0]), ptr(cm[2]), ptr(cm[3]), cm[4], cm[1], *packed_args(cm[0], codes[0][1]),
        ptr(cv[0]), ptr(cv[2]), ptr(cv[3]), cv[4], cv[1], *packed_args(cv[0], codes[1][1]),
        ptr(hp), wd_mode, seeds[0], seeds[1], nb, bs,
    )
    return True
