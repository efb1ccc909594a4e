"""Post-training quantization configs: `FP8Config` (FP8-BERT) and `Int8StaticConfig` (static INT8).

Usage::

    model = eightbit.quantize_model(model, eightbit.FP8Config(format="e4m3"))
    eightbit.calibrate(model, batches)   # static activations only
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from .._checks import FLOAT_DTYPES, check_choice, check_number
from ..functional.fp8 import FORMAT_NAMES
from .base import QuantConfig, check_patterns, register_config
from ..nn.observers import OBSERVERS

_GRANULARITIES = ("channel", "tensor")


def _check_common(cfg: "QuantConfig") -> None:
    check_choice(cfg.weight_granularity, "weight_granularity", _GRANULARITIES)
    check_choice(cfg.calibration, "calibration", tuple(OBSERVERS))
    check_number(cfg.percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)
    cfg.skip_modules = check_patterns(cfg.skip_modules)
    check_choice(cfg.compute_dtype, "compute_dtype", FLOAT_DTYPES)


@register_config
@dataclasses.dataclass
class FP8Config(QuantConfig):
    """FP8 post-training quantization (FP8-BERT): every linear layer becomes `eightbit.nn.LinearFP8`.

    ``format``: "e4m3" (default), "e5m2", "e4m3fnuz", "e5m2fnuz". ``weight_granularity``: "channel"
    (per output channel, the paper) or "tensor". ``activation``: "static" (one calibrated scale per layer,
    the paper; run ``eightbit.calibrate``) or "dynamic" (per-token scales, no calibration).
    ``calibration``: "minmax" (the paper), "percentile", "entropy" or "mse"; ``percentile`` used by
    "percentile". ``skip_modules``: layer name patterns left in float. ``compute_dtype``: GEMM dtype.
    Raises ValueError on any bad value.
    """

    method: ClassVar[str] = "fp8"
    format: str = "e4m3"
    weight_granularity: str = "channel"
    activation: str = "static"
    calibration: str = "minmax"
    percentile: float = 99.99
    skip_modules: tuple[str, ...] = ("lm_head",)
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        check_choice(self.format, "format", FORMAT_NAMES)
        check_choice(self.activation, "activation", ("static", "dynamic"))
        _check_common(self)

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        """True when activations are static."""
        return self.activation == "static"

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        from ..nn.linear_static import LinearFP8

        return LinearFP8.from_linear(
            linear, format=self.format, weight_granularity=self.weight_granularity, activation=self.activation,
            calibration=self.calibration, percentile=self.percentile, compute_dtype=self.compute_dtype,
        )


@register_config
@dataclasses.dataclass
class Int8StaticConfig(QuantConfig):
    """Static INT8 post-training quantization: every linear layer becomes `eightbit.nn.LinearInt8Static`
    with a calibrated per-tensor activation scale (run ``eightbit.calibrate``).

    ``calibration``: "minmax", "percentile", "entropy" (KL, TensorRT) or "mse". ``symmetric``: int8
    activations with zero point 0 (True) or uint8 with a zero point (False); weights are always symmetric
    int8. ``weight_granularity``: "channel" or "tensor" (the FP8-BERT INT8 baseline is per-tensor
    activations and weights with minmax). Raises ValueError on any bad value.
    """

    method: ClassVar[str] = "int8_static"
    needs_calibration: ClassVar[bool] = True
    calibration: str = "minmax"
    symmetric: bool = True
    weight_granularity: str = "channel"
    percentile: float = 99.99
    skip_modules: tuple[str, ...] = ("lm_head",)
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}")
        _check_common(self)

    def make_linear(self, linear: nn.Linear, name: str) -> nn.Module:
        from ..nn.linear_static import LinearInt8Static

        return LinearInt8Static.from_linear(
            linear, symmetric=self.symmetric, weight_granularity=self.weight_granularity,
            calibration=self.calibration, percentile=self.percentile, compute_dtype=self.compute_dtype,
        )
