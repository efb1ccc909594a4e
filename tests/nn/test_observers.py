"""Observers: minmax, percentile, entropy (hand-checked KL), mse; per tensor and per channel; merging."""
from __future__ import annotations

import math

import pytest
import torch

from eightbit.nn.observers import (
    EntropyObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    QuantSpec,
    kl_divergences,
    make_observer,
)

INT8 = QuantSpec("int8")
E4M3 = QuantSpec("fp8", "e4m3")


def test_kl_hand_checked_small_histogram():
    """hist [4, 2, 1, 1], candidates keep 2, 3, 4 bins, toy 2-level uniform quantizer over the kept range.

    i=2: P=[4,4]/8, Q=[4,2]/6            -> KL = .5 ln(.75) + .5 ln(1.5)          = 0.058892
    i=3: P=[4,2,2]/8, levels 0,1,1, Q=[4,1.5,1.5]/7 -> .5 ln(.875) + .5 ln(7/6) = 0.010310
    i=4: P=[4,2,1,1]/8, levels 0,0,1,1, Q=[3,3,1,1]/8 -> .5 ln(4/3) + .25 ln(2/3) = 0.042475
    The minimum is at 3 kept bins."""
    hist = torch.tensor([4.0, 2.0, 1.0, 1.0])
    cand = torch.tensor([2, 3, 4])
    centers = torch.arange(4) + 0.5
    levels = torch.floor(centers[None, :] / cand[:, None] * 2).clamp(max=1).long()
    kl = kl_divergences(hist, cand, levels)
    want = [0.5 * math.log(0.75) + 0.5 * math.log(1.5), 0.5 * math.log(0.875) + 0.5 * math.log(7 / 6),
            0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3)]
    assert torch.allclose(kl, torch.tensor(want, dtype=torch.float64), atol=1e-9)
    assert int(torch.argmin(kl)) == 1


def test_entropy_clips_outliers_and_minmax_does_not(gen):
    x = torch.randn(100_000, generator=gen)
    x[:5] = 80.0  # a few huge outliers
    mm, ent = MinMaxObserver(INT8), EntropyObserver(INT8)
    for chunk in x.split(25_000):
        mm.observe(chunk)
        ent.observe(chunk)
    assert mm.clip_range()[1] == 80.0
    lo, hi = ent.clip_range()
    assert 2.0 < hi < 20.0 and -20.0 < lo < -2.0


def test_percentile_and_mse(gen):
    x = torch.randn(200_000, generator=gen)
    p = PercentileObserver(INT8, percentile=99.0)
    p.observe(x)
    want = torch.quantile(x.abs()[:100_000], 0.99)
    assert abs(float(p.clip_range()[1]) - float(want)) < 0.05
    for spec in (INT8, E4M3):
        m = MSEObserver(spec)
        m.observe(x)
        c = float(m.clip_range()[1])
        amax = float(x.abs().max())
        assert 0 < c <= amax + 1e-3
        if spec is INT8:  # int8 MSE clips gaussian tails: near the clip that minimizes the expected error
            assert abs(c - _gaussian_int8_mse_clip()) < 0.5, c


def _gaussian_int8_mse_clip() -> float:
    """The clip c minimizing the expected squared error of symmetric int8 (127 steps a side) on N(0, 1): clipping
    error 2 * E[(|x| - c)^2; |x| > c] plus rounding noise (c / 127)^2 / 12 inside; 3.921. The observer's histogram
    argmin over 200,000 samples lay within -0.22 .. +0.28 of it over 1,000 seeds (standard deviation ~0.07: the
    error is flat near the optimum), so the test allows 0.5. (A bound on c / max|x| failed by chance: the sample
    maximum itself varies, 4.3-5.)"""
    def expected(c: float) -> float:
        tail = 0.5 * math.erfc(c / math.sqrt(2))
        density = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
        return 2 * ((1 + c * c) * tail - c * density) + (c / 127) ** 2 / 12 * (1 - 2 * tail)

    return min((3 + i / 1000 for i in range(2000)), key=expected)


def test_histogram_merge_growing_range_is_exact():
    obs = PercentileObserver(INT8, bins=64, percentile=100.0)
    obs.observe(torch.tensor([0.5, 1.0]))
    obs.observe(torch.tensor([3.0, 7.9]))  # range grows: bins merge by powers of two
    assert obs.hist.sum() == 4
    assert float(obs.width[0]) == pytest.approx(1.0 / 64 * 8)
    assert float(obs.clip_range()[1]) == pytest.approx(7.9)


@pytest.mark.parametrize("name", ["minmax", "percentile", "entropy", "mse"])
def test_per_channel(name, gen):
    x = torch.randn(8, 4000, generator=gen) * torch.logspace(-2, 2, 8)[:, None]
    obs = make_observer(name, E4M3, axis=0)
    obs.observe(x[:, :2000])
    obs.observe(x[:, 2000:])
    scale, zp = obs.qparams()
    assert scale.shape == (8,) and (zp == 0).all()
    ratio = scale[1:] / scale[:-1]
    assert torch.all(ratio > 2) and torch.all(ratio < 6)  # follows the channel ranges (x3.7 apart)


def test_asymmetric_and_nonfinite():
    obs = MinMaxObserver(QuantSpec("int8", symmetric=False))
    obs.observe(torch.tensor([1.0, 5.0, float("nan"), float("inf")]))
    scale, zp = obs.qparams()
    assert zp == 0 and scale == pytest.approx(5.0 / 255)
    with pytest.raises(RuntimeError):
        EntropyObserver(INT8).qparams()
    with pytest.raises(ValueError):
        make_observer("kl", INT8)
    with pytest.raises(ValueError):
        QuantSpec("fp8", "e4m3", symmetric=False)
