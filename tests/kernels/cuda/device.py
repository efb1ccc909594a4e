"""Where the Triton kernels run in these tests (see conftest.py): ``on(t)`` moves inputs there, ``back(t)``
brings results to the CPU, where the references run."""
import os

import torch

DEVICE = torch.device(os.environ.get("EIGHTBIT_TRITON_DEVICE", "cpu"))


def on(t):
    """``t`` (a tensor, or None) on the kernels' device."""
    return None if t is None else t.to(DEVICE)


def back(t):
    """A kernel's result on the CPU (tuples element-wise)."""
    if isinstance(t, (tuple, list)):
        return type(t)(back(x) for x in t)
    return t.cpu() if isinstance(t, torch.Tensor) else t
