"""Block-wise quantization: nearest-code property vs a float64 reference, kernel == reference, NaN isolation."""
import contextlib

import pytest
import torch

import eightbit.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbit.functional import (
    BlockwiseState,
    create_dynamic_map,
    create_linear_map,
    dequantize_blockwise,
    quantize_blockwise,
)
from eightbit.kernels import reference_only
from tests.numerics import sqnr_db

CODE = create_dynamic_map(True).double()


def _check_nearest(x: torch.Tensor, q: torch.Tensor, state: BlockwiseState) -> None:
    """Every value within half a code step of its nearest code, times its block's absmax (float64 reference)."""
    code = state.code.double()
    bs = state.blocksize
    flat = x.reshape(-1).double()
    n = flat.numel()
    absmax = state.absmax.double().repeat_interleave(bs)[:n]
    ref_absmax = torch.stack([b.abs().max() for b in flat.split(bs)]) if n else torch.zeros(0, dtype=torch.float64)
    torch.testing.assert_close(state.absmax.double(), ref_absmax, rtol=0, atol=0)
    norm = flat / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    chosen = code[q.reshape(-1).long()]
    best = (norm[:, None] - code[None, :]).abs().min(1).values
    # chosen code is the nearest one (up to float32 rounding of the normalization)
    assert torch.all((norm - chosen).abs() <= best + 1e-6), float(((norm - chosen).abs() - best).max())
    deq = dequantize_blockwise(q, state).reshape(-1).double()
    out_eps = torch.finfo(state.dtype).eps  # rounding of the dequantized value to the output dtype
    gaps = torch.cat([code.diff(), code.diff()[-1:]])
    half_step = gaps.max() / 2
    assert torch.all((deq - flat).abs() <= half_step * absmax + 1e-6 * absmax + out_eps * deq.abs() + 1e-38)


@pytest.mark.parametrize("blocksize", [64, 256, 2048, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nearest_code_and_sqnr(gen, blocksize, dtype):
    x = torch.randn(3, 1000, 7, generator=gen).to(dtype)
    x.view(-1)[::997] *= 50  # outliers
    x.view(-1)[5:40] = 0
    q, st_ = quantize_blockwise(x, blocksize=blocksize)
    assert q.dtype == torch.uint8 and q.shape == x.shape and st_.absmax.dtype == torch.float32
    assert st_.absmax.numel() == -(-x.numel() // blocksize)
    _check_nearest(x.float(), q, st_)
    y = dequantize_blockwise(q, st_)
    assert y.dtype == dtype and y.shape == x.shape
    assert sqnr_db(x.float(), y.float()) > 25  # dynamic code on Gaussian data: ~30 dB


def test_non_contiguous_and_odd_shapes(gen):
    base = torch.randn(300, 70, generator=gen)
    x = base.t()[::2]  # non-contiguous
    q, s = quantize_blockwise(x, blocksize=128)
    q2, s2 = quantize_blockwise(x.contiguous(), blocksize=128)
    assert torch.equal(q, q2) and torch.equal(s.absmax, s2.absmax)
    for shape in [(1,), (63,), (65,), (2048,), (2049,), (0,), (5, 0)]:
        x = torch.randn(shape, generator=gen)
        q, s = quantize_blockwise(x, blocksize=64)
        assert dequantize_blockwise(q, s).shape == x.shape
        _check_nearest(x, q, s)


def test_subnormal_and_huge_values(gen):
    x = torch.randn(4096, generator=gen)
    x[:2048] *= 1e-39  # subnormal block
    x[2048:] *= 1e30
    q, s = quantize_blockwise(x, blocksize=2048)
    _check_nearest(x, q, s)
    y = dequantize_blockwise(q, s)
    assert sqnr_db(x[2048:], y[2048:]) > 25


@pytest.mark.parametrize("code", [create_dynamic_map(True), create_dynamic_map(False), create_linear_map(True)])
def test_kernel_matches_reference(gen, code):
    x = torch.randn(37, 4096 + 5, generator=gen) * 3
    if code.min() >= 0:
        x = x.abs()
    q, s = quantize_blockwise(x, code=code, blocksize=1024)
    with reference_only():
        qr, sr = quantize_blockwise(x, code=code, blocksize=1024)
        yr = dequantize_blockwise(qr, sr)
    assert torch.equal(q, qr) and torch.equal(s.absmax, sr.absmax)
    assert torch.equal(dequantize_blockwise(q, s), yr)


def _lut_index(n, table, midp, k):
    """What the native kernel computes from the 65536-entry table (count of midpoints below n)."""
    idx = table[(n.view(torch.int32) >> 16) + 32768]
    for j in range(k):
        idx = idx + (n > midp[idx + j]).to(torch.int32)
    return idx


def test_lut_index_equals_bucketize(gen):
    from eightbit.functional.codes import codebook
    from eightbit.kernels.cpu.tables import build_lut

    for code in (create_dynamic_map(True), create_dynamic_map(False), create_linear_map(False)):
        mid = codebook(code).midpoints
        table, midp, k = build_lut(mid)
        n = torch.cat([torch.rand(100_000, generator=gen) * 2 - 1, mid, mid.nextafter(torch.tensor(2.0)),
                       torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30])])
        assert torch.equal(_lut_index(n, table, midp, k).long(), torch.bucketize(n, mid))


@pytest.mark.parametrize("bad", [nan := float("nan"), float("inf"), -float("inf")])
def test_nonfinite_poisons_only_its_block(gen, bad):
    x = torch.randn(8 * 256, generator=gen)
    q0, s0 = quantize_blockwise(x, blocksize=256)
    x[3 * 256 + 17] = bad
    q, s = quantize_blockwise(x, blocksize=256)
    other = torch.ones(8, dtype=torch.bool)
    other[3] = False
    assert torch.equal(q.view(8, 256)[other], q0.view(8, 256)[other])
    assert torch.equal(s.absmax[other], s0.absmax[other])
    assert torch.isnan(s.absmax[3])
    y = dequantize_blockwise(q, s).view(8, 256)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[other]).all()


def test_bad_arguments():
    x = torch.randn(100)
    for bs in (32, 100, 32768, 2048.0, True):
        with pytest.raises(ValueError, match="blocksize"):
            quantize_blockwise(x, blocksize=bs)
    with pytest.raises(TypeError, match="x must"):
        quantize_blockwise(torch.arange(10))
    with pytest.raises(ValueError, match="code"):
        quantize_blockwise(x, code=torch.zeros(10))
    q, s = quantize_blockwise(x, blocksize=64)
    import numpy as np
    q2, s2 = quantize_blockwise(x, blocksize=np.int64(64))  # NumPy's integers are ints (as torch takes them)
    assert torch.equal(q2, q) and s2.blocksize == 64 and type(s2.blocksize) is int
    with pytest.raises(TypeError, match="q must"):
        dequantize_blockwise(q.int(), s)
    with pytest.raises(ValueError, match="elements"):
        dequantize_blockwise(q[:50], s)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5000),
    log_scale=st.floats(-30, 30),
    blocksize=st.sampled_from([64, 128, 512, 4096]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_nearest_code(n, log_scale, blocksize, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * (10.0**log_scale)
    q, s = quantize_blockwise(x, blocksize=blocksize)
    _check_nearest(x, q, s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(5000,), (3, 2048), (7, 11)])
def test_out_buffers_receive_the_same_result(gen, dtype, shape):
    """``out=`` (bitsandbytes' spelling) writes into the caller's buffer, bit-identical to the allocating call,
    for full and partial blocks, every dtype, with the kernels and with the references."""
    from eightbit.kernels import reference_only

    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    x.view(-1)[5] = float("nan")  # one block flagged, the others unaffected
    for ref in (False, True):
        with reference_only() if ref else contextlib.nullcontext():
            q, st = F.quantize_blockwise(x, blocksize=2048)
            buf = torch.full(shape, 99, dtype=torch.uint8)
            q2, st2 = F.quantize_blockwise(x, blocksize=2048, out=buf)
            assert q2 is buf and torch.equal(q2, q)
            torch.testing.assert_close(st2.absmax, st.absmax, equal_nan=True, rtol=0, atol=0)
            d = F.dequantize_blockwise(q, st)
            out = torch.full(shape, 5.0, dtype=dtype)
            d2 = F.dequantize_blockwise(q, st, out=out)
            assert d2 is out
            torch.testing.assert_close(d2, d, equal_nan=True, rtol=0, atol=0)


def test_out_buffer_errors_name_the_argument():
    x = torch.randn(4096)
    q, st = F.quantize_blockwise(x)
    for bad, err in [(torch.empty(4096, dtype=torch.int8), TypeError), (torch.empty(4095, dtype=torch.uint8), ValueError),
                     (torch.empty(8192, dtype=torch.uint8)[::2], ValueError), ("buffer", TypeError),
                     (torch.empty(4096, dtype=torch.uint8, device="meta"), ValueError)]:
        with pytest.raises(err, match="out"):
            F.quantize_blockwise(x, out=bad)
    with pytest.raises(TypeError, match="out"):
        F.dequantize_blockwise(q, st, out=torch.empty(4096, dtype=torch.float16))
    with pytest.raises(ValueError, match="out"):
        F.dequantize_blockwise(q, st, out=torch.empty(4097))
    with pytest.raises(ValueError, match="out"):
        F.quantize_blockwise(x, None, None, torch.empty(4095, dtype=torch.uint8))  # binds as bitsandbytes: out


def test_works_under_inference_mode(gen):
    """Inference tensors keep no version counter: codes made or first used under inference_mode still work."""
    x = torch.randn(5000, generator=gen)
    want_q, want_s = quantize_blockwise(x)
    with torch.inference_mode():
        code = create_dynamic_map(True)  # an inference tensor
        q, s = quantize_blockwise(x, code=code)
        assert torch.equal(q, want_q) and torch.equal(dequantize_blockwise(q, s), dequantize_blockwise(want_q, want_s))
