"""Large CPU buffers backed by transparent huge pages (kernel outputs, the streaming loader's reads)."""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

__all__ = ["empty"]

_HUGE = 2 << 20  # x86-64 transparent huge page
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=None)
def _madvise():
    """libc's madvise where transparent huge pages can be requested (Linux with THP "madvise" or "always")."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    if "[never]" in mode:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty`` on CPU whose pages, for buffers of 4 MiB and more, are requested as 2 MiB transparent
    huge pages before anything touches them. Why: a fresh large buffer is a new mapping, and faulting it in
    4 KiB pages costs more than the kernels writing it (measured on this project's VM: 84 ms to fault 256 MB,
    the fill itself 15 ms; with huge pages 24 ms). The hint is best effort: without THP support it is
    plain ``torch.empty``."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    madvise = _madvise() if nbytes >= 2 * _HUGE else None
    if madvise is not None:
        start = -(-out.data_ptr() // _HUGE) * _HUGE  # whole huge pages inside the buffer only
        stop = (out.data_ptr() + nbytes) // _HUGE * _HUGE
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)  # a failure only loses the hint
    return out
