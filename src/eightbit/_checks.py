"""Argument checks shared by every public function: clear TypeError/ValueError naming the argument."""
from __future__ import annotations

import numbers
from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def values_checkable(*tensors: object) -> bool:
    """Whether checks that read tensor values may run: not under ``torch.compile``/``torch.export`` tracing
    (there they would be data-dependent branches) and not on meta tensors (which hold no values). Shapes and
    dtypes are always checked; the ops check the values they depend on at run time."""
    if torch.compiler.is_compiling():
        return False
    return not any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors)


def check_tensor(
    x: object,
    name: str,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndim: int | Iterable[int] | None = None,
    min_ndim: int | None = None,
) -> torch.Tensor:
    """Raise TypeError unless ``x`` is a tensor of one of ``dtypes``; ValueError on a wrong number of dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({allowed}), got {str(x.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed_nd = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed_nd:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed_nd))} dims, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    return x


def check_choice(value: object, name: str, choices: Iterable[object]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Raise TypeError for a non-number and ValueError for a number outside [low, high] (or NaN). Numbers are
    Python's and NumPy's real scalars (``numbers.Real``) and one-element real tensors, as torch.optim takes them;
    bools are not."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a number, got a {str(value.dtype).replace('torch.', '')} tensor of "
                            f"shape {tuple(value.shape)}")
    elif isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {value}")
    return v


def check_positive_int(value: object, name: str) -> int:
    """Raise ValueError unless ``value`` is an int (NumPy's integers too; not a bool or a float like 16.7) >= 1."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__") or int(value) <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """Raise TypeError unless ``value`` is a real bool (a truthy string like ``"no"`` must not pass)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def check_out(out: object, name: str, *, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Validate a caller-provided output buffer: a contiguous tensor of exactly ``shape``, ``dtype``, ``device``."""
    check_tensor(out, name, dtypes=(dtype,))
    if out.shape != torch.Size(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.device != torch.device(device):
        raise ValueError(f"{name} must be on {device}, got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return out
