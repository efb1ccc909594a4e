"""Find emergent outlier features (LLM.int8(), Dettmers et al. 2022, section 4) in any model.

Forward pre-hooks record the input of every linear-like layer (``nn.Linear``, transformers ``Conv1D``,
eightbit ``QuantizedLinear``): per hidden dimension, the largest magnitude and the number of token positions
with ``|x| >= threshold``. The paper's criterion for an emergent feature: magnitude >= 6.0 in the same hidden
dimension, in >= 25% of the layers and >= 6% of the sequence positions (``OutlierReport.emergent_dims``).

Only layers whose input width equals the model's hidden size take part in the per-dimension analysis
(their dimension ``j`` is the same residual-stream feature in every layer); the others (e.g. the MLP's second
projection, whose input is the intermediate activation) are still listed per layer.
NaN inputs are ignored (counted in ``LayerOutliers.nan_count``); +-inf counts as an outlier of magnitude inf.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .._checks import check_number


@dataclasses.dataclass
class LayerOutliers:
    """Statistics of one linear layer's input. ``max_abs`` and ``counts`` are [in_features] tensors:
    the largest |x| per dimension (float32) and the positions with |x| >= threshold (int64)."""

    name: str
    kind: str
    in_features: int
    positions: int
    max_abs: torch.Tensor
    counts: torch.Tensor
    nan_count: int = 0

    @property
    def position_frac(self) -> torch.Tensor:
        """Fraction of positions with |x| >= threshold, per dimension ([in_features] float)."""
        return self.counts.double() / max(self.positions, 1)

    def outlier_dims(self) -> list[int]:
        """Dimensions with at least one |x| >= threshold in this layer."""
        return torch.nonzero(self.counts > 0).flatten().tolist()


@dataclasses.dataclass
class DimStats:
    """One hidden dimension across the hidden-width layers (see ``OutlierReport.dim_stats``)."""

    dim: int
    max_magnitude: float
    layers_with_outliers: int
    layers_affected: int
    layer_frac: float
    position_frac: float
    emergent: bool


class OutlierReport:
    """Result of ``find_outlier_features``: per-layer statistics plus the per-dimension view."""

    def __init__(self, layers: list[LayerOutliers], *, threshold: float, hidden_size: int):
        self.layers = layers
        self.threshold = threshold
        self.hidden_size = hidden_size

    @property
    def hidden_layers(self) -> list[LayerOutliers]:
        """Layers whose input width is the hidden size (those enter the per-dimension criterion)."""
        return [layer for layer in self.layers if layer.in_features == self.hidden_size]

    def _affected(self, min_position_frac: float) -> torch.Tensor:
        # (L, C) bool: dimension has outliers at >= min_position_frac of the layer's positions
        layers = self.hidden_layers
        if not layers:
            return torch.zeros(0, self.hidden_size, dtype=torch.bool)
        frac = torch.stack([layer.position_frac for layer in layers])
        counts = torch.stack([layer.counts for layer in layers])
        return (counts > 0) & (frac >= min_position_frac)

    def dim_stats(self, *, min_layer_frac: float = 0.25, min_position_frac: float = 0.06) -> list[DimStats]:
        """Every hidden dimension with at least one |x| >= threshold, most affected first.

        ``layers_affected``: hidden-width layers where the dimension is an outlier at >= ``min_position_frac``
        of the positions; ``position_frac``: mean fraction of positions over those layers (over all layers
        with outliers when none qualifies); ``emergent``: the paper's criterion. ValueError for a fraction outside
        [0, 1]."""
        check_number(min_layer_frac, "min_layer_frac", low=0.0, high=1.0)
        check_number(min_position_frac, "min_position_frac", low=0.0, high=1.0)
        layers = self.hidden_layers
        if not layers:
            return []
        counts = torch.stack([layer.counts for layer in layers])  # (L, C)
        frac = torch.stack([layer.position_frac for layer in layers])  # (L, C)
        max_abs = torch.stack([layer.max_abs for layer in layers]).amax(0)  # (C,)
        affected = self._affected(min_position_frac)
        out = []
        for d in torch.nonzero((counts > 0).any(0)).flatten().tolist():
            n_aff = int(affected[:, d].sum())
            rows = affected[:, d] if n_aff else counts[:, d] > 0
            layer_frac = n_aff / len(layers)
            out.append(DimStats(
                dim=d, max_magnitude=float(max_abs[d]), layers_with_outliers=int((counts[:, d] > 0).sum()),
                layers_affected=n_aff, layer_frac=layer_frac, position_frac=float(frac[rows, d].mean()),
                emergent=n_aff > 0 and layer_frac >= min_layer_frac,
            ))
        out.sort(key=lambda s: (-s.layers_affected, -s.max_magnitude, s.dim))
        return out

    def emergent_dims(self, min_layer_frac: float = 0.25, min_position_frac: float = 0.06) -> list[int]:
        """Sorted hidden dimensions meeting the paper's criterion: |x| >= threshold in >= ``min_layer_frac``
        of the hidden-width layers, each time at >= ``min_position_frac`` of the token positions."""
        stats = self.dim_stats(min_layer_frac=min_layer_frac, min_position_frac=min_position_frac)
        return sorted(s.dim for s in stats if s.emergent)

    def summary(self, *, min_layer_frac: float = 0.25, min_position_frac: float = 0.06) -> str:
        """One line: layers analysed, outlier values, emergent dimensions (under the criterion's fractions, as in
        :meth:`emergent_dims`)."""
        total = sum(layer.positions * layer.in_features for layer in self.layers)
        outliers = sum(int(layer.counts.sum()) for layer in self.layers)
        share = 100.0 * outliers / max(total, 1)
        return (f"{len(self.layers)} linear layers ({len(self.hidden_layers)} of hidden width {self.hidden_size}), "
                f"threshold {self.threshold:g}: {outliers} of {total} input values are outliers ({share:.3f}%); "
                f"emergent dims: {self.emergent_dims(min_layer_frac, min_position_frac) or 'none'}")

    def to_markdown(self, *, max_rows: int = 20, min_layer_frac: float = 0.25, min_position_frac: float = 0.06) -> str:
        """Markdown: a summary line, the per-dimension table (at most ``max_rows`` rows) and a per-layer table, with
        the emergent-dimension criterion's fractions as in :meth:`emergent_dims`."""
        crit = {"min_layer_frac": min_layer_frac, "min_position_frac": min_position_frac}
        lines = [self.summary(**crit), "", "| dim | max abs | layers affected | layer % | positions % | emergent |", "|---:|---:|---:|---:|---:|:---|"]
        stats = self.dim_stats(**crit)
        n_hidden = len(self.hidden_layers)
        for s in stats[:max_rows]:
            lines.append(f"| {s.dim} | {s.max_magnitude:.1f} | {s.layers_affected}/{n_hidden} | {100 * s.layer_frac:.0f} | "
                         f"{100 * s.position_frac:.1f} | {'yes' if s.emergent else 'no'} |")
        if len(stats) > max_rows:
            lines.append(f"| ... {len(stats) - max_rows} more | | | | | |")
        if not stats:
            lines.append("| - | - | - | - | - | none above threshold |")
        lines += ["", "| layer | type | in | max abs | outlier dims |", "|:---|:---|---:|---:|---:|"]
        for layer in self.layers:
            lines.append(f"| {layer.name} | {layer.kind} | {layer.in_features} | {float(layer.max_abs.max()):.1f} | {len(layer.outlier_dims())} |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Save a PNG: per layer, the number of outlier dimensions and the largest input magnitude.
        Needs matplotlib (``pip install eightbit[plot]``); returns the path."""
        from .plots import plot_outlier_report

        return plot_outlier_report(self, path)

    def __repr__(self) -> str:
        return f"OutlierReport({self.summary()})"


def _is_linear_like(module: nn.Module) -> bool:
    from ..nn.base import QuantizedLinear
    from ..quantize.convert import is_linear_like

    return is_linear_like(module) or isinstance(module, QuantizedLinear)


def _guess_hidden_size(model: nn.Module, widths: list[int]) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if isinstance(size, int) and size in widths:
        return size
    return Counter(widths).most_common(1)[0][0]


class _Recorder:
    def __init__(self, name: str, module: nn.Module, threshold: float):
        self.name, self.module, self.threshold = name, module, threshold
        self.kind = type(module).__name__
        self.max_abs: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.positions = 0
        self.nan_count = 0
        self.mask: torch.Tensor | None = None  # (B, T) bool of the current batch, when known

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return
        x = x.detach()
        if self.mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.mask.shape):
            x = x[self.mask.to(x.device)]  # padding positions are not tokens
        a = x.reshape(-1, x.shape[-1]).float().abs()  # (N, C)
        nan = torch.isnan(a)
        if nan.any():
            self.nan_count += int(nan.sum())
            a = a.masked_fill(nan, 0.0)
        m = a.amax(0).cpu() if a.shape[0] else torch.zeros(a.shape[1])
        c = (a >= self.threshold).sum(0).cpu()
        if self.max_abs is None:
            self.max_abs, self.counts = m, c
        elif self.max_abs.shape == m.shape:
            self.max_abs = torch.maximum(self.max_abs, m)
            self.counts += c
        else:
            raise ValueError(f"layer {self.name!r} saw inputs of width {m.shape[0]} and {self.max_abs.shape[0]}")
        self.positions += a.shape[0]


def _run(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def find_outlier_features(
    model: nn.Module,
    batches: Iterable[Any],
    threshold: float = 6.0,
    *,
    hidden_size: int | None = None,
    progress: bool = False,
) -> OutlierReport:
    """Run ``model`` (in eval mode, restored afterwards) on ``batches`` and record the inputs of every
    linear-like layer. Returns an ``OutlierReport``.

    ``batches``: an iterable of tensors (passed positionally), tuples/lists (unpacked) or dicts (keyword
    arguments; an ``attention_mask`` [B, T] there excludes padding positions). ``threshold``: the
    magnitude that makes a value an outlier (the paper's 6.0). ``hidden_size``: the residual width whose
    dimensions are compared across layers (default: ``model.config.hidden_size`` or the most common input
    width). ``progress``: show a tqdm bar. Raises TypeError for a non-module, ValueError when the model has
    no linear layers or ``batches`` is empty.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    threshold = check_number(threshold, "threshold", low=0.0, low_inclusive=False)
    recorders: list[_Recorder] = []
    for name, module in model.named_modules():
        # a quantized layer may wrap a plain linear: record the outermost only
        if _is_linear_like(module) and not any(name.startswith(r.name + ".") for r in recorders if r.name):
            recorders.append(_Recorder(name, module, threshold))
    if not recorders:
        raise ValueError("model has no linear layers (nn.Linear, transformers Conv1D or eightbit QuantizedLinear)")
    handles = [r.module.register_forward_pre_hook(r, with_kwargs=True) for r in recorders]
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="outlier analysis", unit="batch")
        for batch in it:
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            for r in recorders:
                r.mask = mask
            _run(model, batch)
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("batches is empty: pass at least one input batch")
    layers = [
        LayerOutliers(r.name, r.kind, int(r.max_abs.shape[0]), r.positions, r.max_abs, r.counts, r.nan_count)
        for r in recorders if r.max_abs is not None
    ]
    if not layers:
        raise ValueError("no linear layer ran during the forward passes")
    widths = [layer.in_features for layer in layers]
    if hidden_size is None:
        hidden_size = _guess_hidden_size(model, widths)
    elif isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size not in widths:
        raise ValueError(f"hidden_size must be the input width of some linear layer {sorted(set(widths))}, got {hidden_size!r}")
    return OutlierReport(layers, threshold=threshold, hidden_size=hidden_size)
