"""Paged optimizer state (bitsandbytes' ``Paged*`` optimizers): the state of a parameter on an accelerator lives in
host memory and visits the device only for that parameter's update.

bitsandbytes pages its state with CUDA unified memory, which the driver migrates on demand. eightbit streams
instead: the state tensors (8-bit codes, absmax, or 32-bit moments) are kept in pinned host memory; each step copies
one parameter's state to the device, runs the update there and copies it back, all on the current stream, so the
device holds one parameter's state at a time rather than all of it (an 8-bit AdamW state of a 7B model is 14 GB
that then stays on the host). The small code maps (1 KB) stay on the device. After a step that paged anything the
stream is synchronized, so the host copies are current when ``step()`` returns (a ``state_dict()`` reads them).

Parameters on the CPU are not paged: host memory is all there is, and the optimizer is the plain one.
"""
from __future__ import annotations

import torch

__all__ = ["pinned", "host_tensor", "fetch", "write_back", "synchronize"]


def pinned(for_device: torch.device) -> bool:
    """Whether host state serving a parameter on ``for_device`` is pinned (CUDA: so the copies run asynchronously)."""
    return for_device.type == "cuda" and torch.cuda.is_available()


def host_tensor(t: torch.Tensor, for_device: torch.device) -> torch.Tensor:
    """``t`` as a host tensor, pinned where :func:`pinned` says so."""
    t = t.detach().to("cpu")
    return t.pin_memory() if pinned(for_device) else t


def fetch(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Device copies of host state tensors for one update (always copies: the update must not write the host
    tensors directly; ``write_back`` does that once it is done)."""
    return [t.to(device, non_blocking=True, copy=True) for t in tensors]


def write_back(host: list[torch.Tensor], device_copies: list[torch.Tensor]) -> None:
    """Copy the updated device state back into its host tensors (ordered on the current stream after the update)."""
    for h, d in zip(host, device_copies):
        h.copy_(d, non_blocking=True)


def synchronize(devices: set[torch.device]) -> None:
    """Wait for the copies back to the host on each accelerator that paged state this step (CUDA: its current
    stream; other accelerators: the device, through their torch device module)."""
    for dev in devices:
        if dev.type == "cuda":
            torch.cuda.current_stream(dev).synchronize()
        elif dev.type != "cpu":
            torch.get_device_module(dev.type).synchronize()
