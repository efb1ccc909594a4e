"""Triton block-wise kernels (interpreted, CPU tensors) bit-identical to the reference: codes and absmax for
hostile inputs (zeros, -0, subnormals, float32 max, 60 decades of magnitude, NaN/Inf blocks), every code map
kind, block sizes 64 to 16384 with a partial last block, float32/bf16/fp16 input; stochastic rounding with the
reference's draws; dequantization into every float dtype."""
import pytest
import torch

from eightbit.functional import create_binary_dynamic_map, create_dynamic_map, create_linear_map, create_quantile_map
from eightbit.functional.blockwise import (dequantize_blockwise_reference, quantize_blockwise_reference,
                                           quantize_blocks)
from eightbit.functional.codes import codebook
from eightbit.kernels.cuda import blockwise as K
from tests.kernels.test_native_cpu import _hostile

from .device import back, on

CODES = {
    "dynamic-signed": lambda: create_dynamic_map(signed=True),
    "dynamic-unsigned": lambda: create_dynamic_map(signed=False),
    "linear": lambda: create_linear_map(signed=True),
    "binary-signed": lambda: create_binary_dynamic_map(signed=True),
    "binary-unsigned": lambda: create_binary_dynamic_map(signed=False),
    "quantile": lambda: create_quantile_map(torch.randn(4096, generator=torch.Generator().manual_seed(0))),
}


def _same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("code_name", list(CODES))
@pytest.mark.parametrize("blocksize,n", [(64, 64 * 5 + 3), (256, 256 * 3), (2048, 2048 * 2 + 1000)])
def test_quantize_bit_identical(gen, code_name, blocksize, n):
    code = CODES[code_name]()
    x = _hostile(n, gen, nonneg=code_name == "dynamic-unsigned")
    x[blocksize + 3] = float("nan")  # block 1: NaN
    if n > 3 * blocksize:
        x[2 * blocksize : 3 * blocksize] = 0.0  # block 2: zeros
    q, absmax = back(K.quantize_blockwise(on(x), on(code), blocksize))
    q_ref, absmax_ref = quantize_blockwise_reference(x, code, blocksize)
    assert torch.equal(q, q_ref) and _same(absmax, absmax_ref)
    y = back(K.dequantize_blockwise(on(q), on(absmax), on(code), blocksize, torch.float32))
    assert _same(y, dequantize_blockwise_reference(q_ref, absmax_ref, code, blocksize, torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_half_inputs_and_inf_block(gen, dtype):
    x = (torch.randn(3 * 512 + 17, generator=gen) * 100).to(dtype)
    x[600] = float("inf")
    q, absmax = back(K.quantize_blockwise(on(x), on(create_dynamic_map()), 512))
    q_ref, absmax_ref = quantize_blockwise_reference(x, create_dynamic_map(), 512)
    assert torch.equal(q, q_ref) and _same(absmax, absmax_ref) and absmax[1].isnan()


def test_largest_block(gen):
    x = torch.randn(16384 + 100, generator=gen)
    q, absmax = back(K.quantize_blockwise(on(x), on(create_dynamic_map()), 16384))
    q_ref, absmax_ref = quantize_blockwise_reference(x, create_dynamic_map(), 16384)
    assert torch.equal(q, q_ref) and torch.equal(absmax, absmax_ref)


@pytest.mark.parametrize("code_name", ["dynamic-signed", "dynamic-unsigned", "binary-signed", "binary-unsigned"])
def test_stochastic_rounding_bit_identical(gen, code_name):
    """Same seed, same first index, same codes as the reference (the draws are the same integer arithmetic)."""
    code = CODES[code_name]()
    x = _hostile(4 * 256, gen, nonneg=code_name.endswith("unsigned"))
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    first = 2**31 - 300  # crosses the 2^31 wrap of the counter
    q = on(torch.empty(x.shape, dtype=torch.uint8))
    absmax = on(torch.empty(4))
    K.quantize_into(on(x), on(code), 256, q, absmax, seed=seed, first=first)
    q, absmax = back((q, absmax))
    q_ref, absmax_ref = quantize_blocks(x.view(4, 256), codebook(code), seed, first)
    assert torch.equal(q, q_ref.view(-1)) and _same(absmax, absmax_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_into_every_dtype(gen, dtype):
    code = create_dynamic_map()
    q = torch.randint(0, 256, (3 * 128 + 5,), dtype=torch.uint8, generator=gen)
    absmax = torch.rand(4, generator=gen) * 1e3
    absmax[2] = float("nan")
    got = back(K.dequantize_blockwise(on(q), on(absmax), on(code), 128, dtype))
    want = dequantize_blockwise_reference(q, absmax, code, 128, dtype)
    assert got.dtype == dtype and _same(got.float(), want.float())
