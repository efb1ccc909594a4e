"""Code maps: the dynamic tree code against the paper's description and bitsandbytes' values."""
import pytest
import torch

from eightbit.functional import create_dynamic_map, create_linear_map, create_quantile_map


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_properties(signed):
    c = create_dynamic_map(signed=signed)
    assert c.shape == (256,) and c.dtype == torch.float32
    assert torch.all(c[1:] >= c[:-1])  # sorted
    assert c.max() == 1.0 and (c == 0).sum() == 1
    pos = c[c > 0]
    # magnitudes from ~1e-7 to 1, more precision (denser codes) at large magnitude: decade k has 2^k codes
    assert 1e-7 < pos.min() < 1e-6
    counts = [int(((pos >= 10.0**-k) & (pos < 10.0 ** (1 - k))).sum()) for k in range(1, 8)]
    per_sign = [2 ** (6 - i + (0 if signed else 1)) for i in range(7)]
    assert counts == per_sign
    if signed:
        assert c.min() > -1.0 and torch.allclose(c[c < 0].abs().sort().values, pos[pos < 1].sort().values)
    else:
        assert c.min() == 0


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_matches_bitsandbytes(signed):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(create_dynamic_map(signed=signed), bnbf.create_dynamic_map(signed=signed))
    assert torch.equal(create_dynamic_map(True, 4, 8), bnbf.create_dynamic_map(True, 4, 8))


def test_dynamic_map_bad_args():
    with pytest.raises(ValueError, match="total_bits"):
        create_dynamic_map(total_bits=9)
    with pytest.raises(ValueError, match="max_exponent_bits"):
        create_dynamic_map(max_exponent_bits=0)


def test_linear_map():
    s, u = create_linear_map(True), create_linear_map(False)
    assert s.shape == u.shape == (256,)
    assert s.min() == -1 and s.max() == 1 and (s == 0).any() and torch.all(s[1:] >= s[:-1])
    assert u.min() == 0 and u.max() == 1 and torch.allclose(u.diff(), torch.full((255,), 1 / 255), atol=1e-6)


def test_quantile_map(gen):
    x = torch.randn(100_000, generator=gen)
    c = create_quantile_map(x)
    assert c.shape == (256,) and torch.all(c[1:] >= c[:-1]) and c.abs().max() == 1.0
    # about equal mass between consecutive codes: the median code sits near 0
    assert abs(float(c[128])) < 0.05
    cu = create_quantile_map(x, signed=False)
    assert cu.min() >= 0
    with pytest.raises(ValueError, match="finite"):
        create_quantile_map(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="x must"):
        create_quantile_map(torch.arange(3))
