"""The binary dynamic map (the 8-bit optimizers' default state code): structure, recognition by the codebook,
power-of-two block scales, and the quantization error bound it gives (nearest: half a gap)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbit.functional import create_binary_dynamic_map, create_dynamic_map, dequantize_blockwise, quantize_blockwise
from eightbit.functional.blockwise import pow2_above
from eightbit.functional.codes import BINARY_GROUPS, codebook


@pytest.mark.parametrize("signed", [True, False])
def test_structure(signed):
    code = create_binary_dynamic_map(signed)
    assert code.dtype == torch.float32 and code.numel() == 256
    assert bool((code[1:] >= code[:-1]).all()) and float(code.abs().max()) < 1
    pos = code[code > 0].double()
    assert pos.numel() == (127 if signed else 255)
    gaps = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), pos]))
    assert torch.equal(torch.exp2(torch.log2(gaps).round()), gaps)  # every gap a power of two
    binades = sum(b for b, _ in BINARY_GROUPS[signed])
    assert float(pos[0]) == 2.0**-binades
    if signed:  # symmetric, two zeros at 127 and 128
        assert torch.equal(code[:127], -code[129:].flip(0)) and code[127] == 0 and code[128] == 0
    else:
        assert code[0] == 0


def test_bad_signed_argument():
    with pytest.raises(TypeError, match="signed"):
        create_binary_dynamic_map(1)


def test_codebook_recognizes_only_the_exact_maps():
    for signed in (True, False):
        assert codebook(create_binary_dynamic_map(signed)).pow2_scale
        assert not codebook(create_dynamic_map(signed)).pow2_scale
        bent = create_binary_dynamic_map(signed)
        bent[200] = torch.nextafter(bent[200], torch.tensor(1.0))
        assert not codebook(bent).pow2_scale


def test_pow2_above():
    a = torch.tensor([0.0, 1.0, 0.75, 1e-40, 3e38, 2.0**-126, float("nan"), float("inf")])
    got = pow2_above(a)
    assert torch.equal(got[:6], torch.tensor([0.0, 2.0, 1.0, 2.0**-126, 2.0**127, 2.0**-125]))
    assert got[6].isnan() and got[7] == float("inf")


def _gap_bound(x: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    """Half the gap around each value (cmin / 2 below the smallest code cmin); above the top code (1 - gap: the
    scale is at most twice the absmax, so |n| < 1) the whole top gap, as values there saturate."""
    code = create_binary_dynamic_map(signed).double()
    pos = code[code > 0]
    n_raw = (x.double() / scale).abs()
    n = n_raw.clamp(max=float(pos[-1]))
    idx = torch.searchsorted(pos, n, right=True).clamp(1, pos.numel() - 1)  # pos[idx-1] <= n < pos[idx]
    gap = pos[idx] - pos[idx - 1]
    half = torch.where(n < pos[0], pos[0], gap) / 2
    half = torch.where(n_raw > pos[-1], 1 - pos[-1], half)
    return half * scale + 1e-300


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), signed=st.booleans(), spread=st.floats(0.0, 12.0),
       blocksize=st.sampled_from([64, 256, 2048]))
def test_nearest_error_within_half_gap(seed, signed, spread, blocksize):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(blocksize * 3 + 17, generator=g) * torch.exp(torch.randn(blocksize * 3 + 17, generator=g) * spread)
    if not signed:
        x = x.abs()
    code = create_binary_dynamic_map(signed)
    q, state = quantize_blockwise(x, code=code, blocksize=blocksize)
    y = dequantize_blockwise(q, state)
    absmax = state.absmax
    amax = torch.stack([b.abs().max() for b in x.split(blocksize)])
    assert torch.equal(absmax, pow2_above(amax)), f"seed {seed}"  # power-of-two scales in (amax, 2 amax]
    scale = absmax.repeat_interleave(blocksize)[: x.numel()].double()
    err = (y.double() - x.double()).abs()
    assert bool((err <= _gap_bound(x, scale, signed)).all()), f"seed {seed}"
