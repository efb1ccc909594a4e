"""Per-parameter optimizer state: its names, and reading other layouts into them.

Names. 32-bit states keep torch's names (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``square_avg``,
``sum``): they hold the same float moments as torch's optimizers. 8-bit states use bitsandbytes' names, which no
float optimizer reads: ``state1``/``state2`` (uint8 codes), ``absmax1``/``absmax2`` (float32, one per block),
``qmap1``/``qmap2`` (the 256-entry code maps) and ``blocksize``. So ``torch.optim.AdamW.load_state_dict`` of an
8-bit state fails on its first step (no ``exp_avg``) instead of moving parameters by 1e4 with uint8 codes read
as moments.

Layouts read by :func:`translate_state`: eightbit's own; eightbit before 0.2 (``exp_avg`` uint8 +
``exp_avg_absmax``, the block size of the group); bitsandbytes' (its 8-bit entries nested under
``__bnb_optimizer_quant_state__`` as its ``state_dict()`` writes them, or flat as in ``optimizer.state``; its
32-bit ``state1``/``state2``; block size inferred from the number of absmax values, 256 for its block-wise
optimizers; its AdEMAMix, whose ``state1`` stacks m1 and m2).
"""
from __future__ import annotations

from typing import Any

import torch

from ..functional.blockwise import VALID_BLOCKSIZES
from ..functional.codes import binary_codebook, dynamic_codebook

__all__ = ["slot", "translate_state", "shared_code"]

BNB_NESTED = "__bnb_optimizer_quant_state__"


def slot(kind: str, i: int) -> str:
    """Name of 8-bit entry ``kind`` ("state", "absmax" or "qmap") of state ``i`` (0-based)."""
    return f"{kind}{i + 1}"


def shared_code(code: torch.Tensor, signed: bool, device: torch.device) -> torch.Tensor:
    """``code`` on ``device``, or the one shared binary or decimal dynamic map when it holds the same values (its
    lookup tables are then built once for every parameter, not once per loaded tensor)."""
    code = code.detach().to(device, torch.float32)
    for make in (binary_codebook, dynamic_codebook):
        default = make(signed, device).values
        if code.shape == default.shape and torch.equal(code, default):
            return default
    return code.clone().contiguous()


def _infer_blocksize(numel: int, nblocks: int) -> int | None:
    for bs in VALID_BLOCKSIZES:
        if -(-numel // bs) == nblocks:
            return bs
    return None


def _unstack_ademamix(st: dict, nstates: int, numel: int) -> None:
    """bitsandbytes' AdEMAMix keeps m1 and m2 stacked in ``state1`` [2, *shape] (8-bit: ``absmax1`` [2, blocks],
    one signed ``qmap1`` for both) and nu in ``state2``: split them into eightbit's three states in place."""
    s1 = st.get("state1")
    if (nstates != 3 or "state3" in st or not isinstance(s1, torch.Tensor) or s1.dim() < 1 or s1.shape[0] != 2
            or s1.numel() != 2 * numel):
        return
    st["state1"], st["state2"], st["state3"] = s1[0].clone(), s1[1].clone(), st.get("state2")
    a1 = st.get("absmax1")
    if isinstance(a1, torch.Tensor) and a1.dim() == 2 and a1.shape[0] == 2:
        st["absmax1"], st["absmax2"], st["absmax3"] = a1[0].clone(), a1[1].clone(), st.get("absmax2")
        st["qmap1"], st["qmap2"], st["qmap3"] = st.get("qmap1"), st.get("qmap1"), st.get("qmap2")


def translate_state(st: Any, spec: tuple[tuple[str, bool], ...], numel: int, group_blocksize: int) -> Any:
    """``st`` (one parameter's state, any layout above) in eightbit's names; other values pass through for the
    checks to judge. ``spec``: the optimizer's (32-bit name, signed) pairs; ``numel``: the parameter's size."""
    if not isinstance(st, dict):
        return st
    st = dict(st)
    nested = st.pop(BNB_NESTED, None)
    if isinstance(nested, dict):
        st.update(nested)
    names = [n for n, _ in spec]
    first = st.get(names[0]) if names else None
    if isinstance(first, torch.Tensor) and first.dtype == torch.uint8:  # eightbit before 0.2
        for i, name in enumerate(names):
            if name in st:
                st[slot("state", i)] = st.pop(name)
            if name + "_absmax" in st:
                st[slot("absmax", i)] = st.pop(name + "_absmax")
            st.setdefault(slot("qmap", i), dynamic_codebook(spec[i][1]).values)
        st.setdefault("blocksize", group_blocksize)
    _unstack_ademamix(st, len(names), numel)
    s1 = st.get("state1")
    if isinstance(s1, torch.Tensor) and s1.is_floating_point():  # bitsandbytes' 32-bit state
        for i, name in enumerate(names):
            if slot("state", i) in st:
                st[name] = st.pop(slot("state", i))
    elif isinstance(s1, torch.Tensor) and "blocksize" not in st and isinstance(st.get("absmax1"), torch.Tensor):
        bs = _infer_blocksize(numel, st["absmax1"].numel())  # bitsandbytes' 8-bit state
        if bs is not None:
            st["blocksize"] = bs
    for key in ("unorm_vec", "gnorm_vec"):  # bitsandbytes' clipping buffers: eightbit keeps its own history
        st.pop(key, None)
    return st
