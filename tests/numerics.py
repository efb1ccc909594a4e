"""Numeric yardsticks for tests: always against a float64 reference."""
from __future__ import annotations

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (float64); +inf when exact."""
    ref = reference.double()
    err = (approx.double() - ref).pow(2).sum()
    sig = ref.pow(2).sum()
    if err == 0:
        return float("inf")
    return float(10 * torch.log10(sig / err))


def rel_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """||approx - ref||_F / ||ref||_F in float64."""
    ref = reference.double()
    return float((approx.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def frac_out_of_tol(reference: torch.Tensor, approx: torch.Tensor, *, atol: float, rtol: float) -> float:
    """Fraction of elements with |approx - ref| > atol + rtol * |ref|."""
    ref = reference.double()
    bad = (approx.double() - ref).abs() > atol + rtol * ref.abs()
    return float(bad.double().mean()) if bad.numel() else 0.0
