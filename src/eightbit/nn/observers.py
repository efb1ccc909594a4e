"""The target-format abstraction (`QuantSpec`, INT8 or FP8) and the calibration observers.

An observer watches tensors (``observe(x)``, any number of batches) and then proposes a clipping range and
the (scale, zero_point) of its `QuantSpec`. Observers: ``minmax`` (running min/max), ``percentile`` (the
given percentile of |x|), ``entropy`` (TensorRT / Migacz 2017: the threshold minimizing the KL divergence
between the clipped reference histogram and its quantized version, as in Bhandare et al. 2019), ``mse``
(the clip value minimizing the expected quantization MSE for the target format). The last three keep a
histogram of |x| (2048 bins) that merges across batches: when a batch exceeds the current range the bin
width doubles (adjacent bins merge exactly) as often as needed. Each works per tensor (``axis=None``) or
per slice along ``axis``. Non-finite values are ignored (they saturate at run time). Histogram-based
clip values are resolved to one bin.
"""
from __future__ import annotations

import dataclasses

import torch

from .._checks import check_choice, check_number
from ..functional.affine import (
    affine_params,
    dequantize_int8,
    finite_minmax,
    quantize_int8,
    scale_from_amax,
)
from ..functional.fp8 import FORMAT_NAMES, dequantize_fp8, get_format, quantize_fp8


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A target 8-bit format: ``kind="int8"`` (symmetric int8 or asymmetric uint8) or ``kind="fp8"``
    (``format`` one of ``FP8_FORMATS``, always symmetric, saturating). One object serves observers,
    layers and configs, so INT8 and FP8 share every code path."""

    kind: str
    format: str = "e4m3"
    symmetric: bool = True

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", ("int8", "fp8"))
        if self.kind == "fp8":
            check_choice(self.format, "format", FORMAT_NAMES)
            if not self.symmetric:
                raise ValueError("fp8 quantization is symmetric: symmetric must be True")

    @property
    def qmax(self) -> float:
        """Largest magnitude code value (448 for e4m3, 127 for symmetric int8, 255 for uint8)."""
        if self.kind == "fp8":
            return get_format(self.format).max
        return 127.0 if self.symmetric else 255.0

    @property
    def storage_dtype(self) -> torch.dtype:
        """dtype of the codes (a torch float8 dtype, int8 or uint8)."""
        if self.kind == "fp8":
            return get_format(self.format).dtype
        return torch.int8 if self.symmetric else torch.uint8

    @property
    def name(self) -> str:
        """Short display name ("fp8-e4m3", "int8", "uint8")."""
        return f"fp8-{get_format(self.format).name}" if self.kind == "fp8" else ("int8" if self.symmetric else "uint8")

    def qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale fp32, zero_point int32) covering the clip range [lo, hi] (0-dim or per channel)."""
        if self.symmetric:
            scale = scale_from_amax(torch.maximum(lo.abs(), hi.abs()), self.qmax)
            return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        return affine_params(lo, hi)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, axis: int | None = None) -> torch.Tensor:
        """Codes of ``x`` (``storage_dtype``) with the given scale (and zero point for uint8)."""
        if self.kind == "fp8":
            return quantize_fp8(x, self.format, scale=scale, axis=axis)[0]
        return quantize_int8(x, scale, zero_point, axis=axis, symmetric=self.symmetric)[0]

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, axis: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values of codes ``q`` in ``dtype``."""
        if self.kind == "fp8":
            return dequantize_fp8(q, scale, self.format, axis=axis, dtype=dtype)
        return dequantize_int8(q, scale, None if self.symmetric else zero_point, axis=axis, dtype=dtype)

    def fake_quantize(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, axis: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dequantize(quantize(x))`` in ``dtype`` (default ``x.dtype``)."""
        return self.dequantize(self.quantize(x, scale, zero_point, axis), scale, zero_point, axis, dtype or x.dtype)

    def level_ids(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Integer id of the quantization level each non-negative value falls on; ``values`` (K, N) with one
        scale per row (K,). Used by the entropy observer to group histogram bins."""
        if self.kind == "fp8":
            return quantize_fp8(values, self.format, scale=scale, axis=0)[0].view(torch.uint8).long()
        return torch.round(values / scale[:, None]).clamp(0, 255).long()


class Observer:
    """Base observer: ``observe(x)`` any number of times, then ``clip_range()`` / ``qparams()``.

    ``axis=None``: one range for the whole tensor; ``axis=k``: one per slice along dim ``k``."""

    def __init__(self, spec: QuantSpec, *, axis: int | None = None) -> None:
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.axis = axis
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    @property
    def has_data(self) -> bool:
        """True once at least one tensor was observed."""
        return self.min is not None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the statistics with ``x`` (any float dtype; non-finite values are ignored)."""
        x = x.detach()
        if self.axis is not None and self.axis >= x.dim():
            raise ValueError(f"observer axis {self.axis} out of range for shape {tuple(x.shape)}")
        lo, hi = finite_minmax(x, self.axis)
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            if lo.shape != self.min.shape:
                raise ValueError(f"observed tensor has {lo.numel()} channels, earlier ones had {self.min.numel()}")
            self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self._update(x)

    def _update(self, x: torch.Tensor) -> None:
        pass

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) fp32, 0-dim or (C,). RuntimeError when nothing was observed."""
        if not self.has_data:
            raise RuntimeError(f"{type(self).__name__} has observed no data")
        return self.min, self.max

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of ``spec`` for the clip range."""
        return self.spec.qparams(*self.clip_range())


class MinMaxObserver(Observer):
    """Clip range = running [min, max] (the FP8-BERT recipe)."""


class HistogramObserver(Observer):
    """Base of the histogram observers: a merged histogram of |x| per channel; subclasses pick a threshold
    ``c`` per channel and the clip range becomes [max(min, -c), min(max, c)]."""

    def __init__(self, spec: QuantSpec, *, axis: int | None = None, bins: int = 2048) -> None:
        super().__init__(spec, axis=axis)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
            raise ValueError(f"bins must be an int >= 16, got {bins!r}")
        self.bins = bins
        self.hist: torch.Tensor | None = None  # (C, bins) float64 counts
        self.width: torch.Tensor | None = None  # (C,) float64 bin width; the range is [0, bins * width]

    def _update(self, x: torch.Tensor) -> None:
        rows = (x.reshape(1, -1) if self.axis is None else x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)).abs()
        amax = torch.maximum(self.min.abs(), self.max.abs()).reshape(-1).double()
        C = rows.shape[0]
        if self.hist is None:
            self.hist = torch.zeros(C, self.bins, dtype=torch.float64)
            self.width = torch.where(amax > 0, amax / self.bins, torch.full_like(amax, 1e-30))
        else:
            grow = torch.ceil(torch.log2(amax / (self.width * self.bins))).clamp_min(0).nan_to_num(0.0).long()
            if bool((grow > 0).any()):
                idx = torch.arange(self.bins)[None, :] >> grow[:, None].clamp_max(62)  # old bin -> merged bin
                merged = torch.zeros_like(self.hist).scatter_add_(1, idx, self.hist)
                self.hist, self.width = merged, self.width * torch.pow(2.0, grow.double())
        if C == 1:  # per tensor: histc's C kernel (ignores NaN/inf-out-of-range values)
            top = float(self.width[0]) * self.bins
            finite = rows[torch.isfinite(rows)] if not bool(torch.isfinite(rows).all()) else rows
            self.hist[0] += torch.histc(finite.float().reshape(-1), self.bins, 0.0, top).double()
            return
        finite = torch.isfinite(rows)
        idx = torch.floor(rows.double() / self.width[:, None]).clamp(0, self.bins - 1).long()
        idx = idx + torch.arange(C)[:, None] * self.bins
        counts = torch.bincount(idx[finite], minlength=C * self.bins)
        self.hist += counts.reshape(C, self.bins).double()

    def thresholds(self) -> torch.Tensor:
        """Clip magnitude per channel (C,) fp64."""
        return torch.stack([self._threshold(self.hist[c], float(self.width[c])) for c in range(self.hist.shape[0])])

    def _threshold(self, hist: torch.Tensor, width: float) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().clip_range()
        c = self.thresholds().float()
        c = c[0] if self.axis is None else c
        return torch.maximum(lo, -c), torch.minimum(hi, c)


class PercentileObserver(HistogramObserver):
    """Clip |x| at the ``percentile`` (e.g. 99.99) of its histogram (upper edge of the bin reaching it)."""

    def __init__(self, spec: QuantSpec, *, axis: int | None = None, bins: int = 2048, percentile: float = 99.99) -> None:
        super().__init__(spec, axis=axis, bins=bins)
        self.percentile = check_number(percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)

    def _threshold(self, hist: torch.Tensor, width: float) -> torch.Tensor:
        total = hist.sum()
        if total == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        cdf = torch.cumsum(hist, 0) / total
        i = int(torch.searchsorted(cdf, torch.tensor([self.percentile / 100.0], dtype=torch.float64) - 1e-12)[0])
        return torch.tensor((min(i, self.bins - 1) + 1) * width, dtype=torch.float64)


def _candidates(bins: int, start: int, stride: int) -> torch.Tensor:
    c = list(range(start, bins + 1, stride))
    if c[-1] != bins:
        c.append(bins)
    return torch.tensor(c)


def kl_divergences(hist: torch.Tensor, candidates: torch.Tensor, levels: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """KL(P || Q) for each candidate bin count ``i`` in ``candidates`` (K,), TensorRT style.

    ``hist`` (N,): counts of |x| per bin. P = hist[:i] with the mass of hist[i:] added to bin i-1.
    Q: hist[:i] grouped by quantization level (``levels`` (K, N): level id of each bin's centre for that
    candidate's scale), each group's mass spread evenly over its non-empty bins. Both normalised; a bin
    with P > 0 and Q = 0 gets Q = ``eps``. Returns (K,) float64."""
    hist = hist.double()
    K, N = levels.shape
    keep = torch.arange(N)[None, :] < candidates[:, None]  # (K, N)
    sliced = hist[None, :] * keep
    p = sliced.clone()
    p[torch.arange(K), candidates - 1] += hist.sum() - sliced.sum(1)
    L = int(levels.max()) + 1
    gid = (levels + torch.arange(K)[:, None] * L).reshape(-1)
    nonzero = (sliced > 0).double()
    mass = torch.zeros(K * L, dtype=torch.float64).scatter_add_(0, gid, sliced.reshape(-1))
    count = torch.zeros(K * L, dtype=torch.float64).scatter_add_(0, gid, nonzero.reshape(-1))
    q = (mass[gid] / count[gid].clamp_min(1)).reshape(K, N) * nonzero
    p = p / p.sum(1, keepdim=True).clamp_min(1e-300)
    q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
    q = torch.where((p > 0) & (q <= 0), eps, q)
    return torch.where(p > 0, p * torch.log(p / q), 0.0).sum(1)


class EntropyObserver(HistogramObserver):
    """Threshold minimizing KL(P || Q) (TensorRT entropy calibration) for the target format's levels.

    Candidates: every ``stride``-th bin from ``start_bin`` (128 by default: INT8 has 128 levels).
    Threshold = upper edge of the last kept bin."""

    def __init__(self, spec: QuantSpec, *, axis: int | None = None, bins: int = 2048, start_bin: int = 128, stride: int = 16) -> None:
        super().__init__(spec, axis=axis, bins=bins)
        if not 1 <= start_bin <= bins or stride < 1:
            raise ValueError(f"need 1 <= start_bin <= bins and stride >= 1, got start_bin={start_bin}, stride={stride}")
        self.start_bin, self.stride = start_bin, stride

    def divergences(self, hist: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidate bin counts (K,), KL divergence of each (K,)) for one channel's histogram."""
        cand = _candidates(self.bins, self.start_bin, self.stride)
        centers = ((torch.arange(self.bins, dtype=torch.float64) + 0.5) * width).float()
        scale = (cand.double() * width / self.spec.qmax).float()
        levels = self.spec.level_ids(centers.expand(len(cand), -1).contiguous(), scale)
        return cand, kl_divergences(hist, cand, levels)

    def _threshold(self, hist: torch.Tensor, width: float) -> torch.Tensor:
        if hist.sum() == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        cand, kl = self.divergences(hist, width)
        return cand[int(torch.argmin(kl))].double() * width


class MSEObserver(HistogramObserver):
    """Clip value minimizing the expected squared error of fake-quantizing |x| (bin centres weighted by
    counts) with the target format; candidates every ``stride``-th bin edge."""

    def __init__(self, spec: QuantSpec, *, axis: int | None = None, bins: int = 2048, stride: int = 8) -> None:
        super().__init__(spec, axis=axis, bins=bins)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride

    def _threshold(self, hist: torch.Tensor, width: float) -> torch.Tensor:
        if hist.sum() == 0:
            return torch.tensor(0.0, dtype=torch.float64)
        cand = _candidates(self.bins, self.stride, self.stride)
        centers = ((torch.arange(self.bins, dtype=torch.float64) + 0.5) * width).float()
        spec = QuantSpec(self.spec.kind, self.spec.format)  # |x| is symmetric: judge the symmetric grid
        scale = spec.qparams(torch.zeros(len(cand)), (cand.double() * width).float())[0]
        vals = centers.expand(len(cand), -1).contiguous()
        fq = spec.fake_quantize(vals, scale, axis=0)
        err = ((fq.double() - vals.double()) ** 2 * hist.double()[None, :]).sum(1)
        return cand[int(torch.argmin(err))].double() * width


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, spec: QuantSpec, *, axis: int | None = None, percentile: float = 99.99) -> Observer:
    """The observer called ``name`` (one of ``OBSERVERS``) for ``spec``."""
    check_choice(name, "calibration", tuple(OBSERVERS))
    if name == "percentile":
        return PercentileObserver(spec, axis=axis, percentile=percentile)
    return OBSERVERS[name](spec, axis=axis)


__all__ = ["QuantSpec", "Observer", "MinMaxObserver", "PercentileObserver", "EntropyObserver", "MSEObserver",
           "OBSERVERS", "make_observer", "kl_divergences"]
