"""The op layer: every declared op passes ``torch.library.opcheck`` (schema, fake tensor, autograd registration,
AOT dispatch) on CPU with its kernel and with the reference; fake (meta) shapes match the real results; the
references are registered for every op."""
from __future__ import annotations

import pytest
import torch

from eightbit.functional import create_dynamic_map, ops
from eightbit.functional.codes import binary_codebook, dynamic_codebook
from eightbit.functional.optimizer import OptimHyper
from eightbit.kernels import reference_only


def _samples() -> dict[str, list[tuple[tuple, dict]]]:
    """Sample (args, kwargs) per op: small, odd shapes, partial blocks, NaN where the op defines it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 70, generator=g) * 2
    x[:, 3] *= 10  # an outlier column
    w = torch.randint(-127, 128, (9, 70), dtype=torch.int8, generator=g)
    wa = torch.rand(9, generator=g) + 0.1
    xq = torch.randint(-127, 128, (5, 70), dtype=torch.int8, generator=g)
    xa = torch.rand(5, generator=g) + 0.1
    code = create_dynamic_map(True)
    v = torch.randn(3, 100, generator=g)  # 300 values: blocks of 64 plus a partial one
    q = torch.randint(0, 256, (300,), dtype=torch.uint8, generator=g)
    absmax = torch.rand(5, generator=g)
    scale = torch.tensor(0.05)
    fp8 = (torch.randn(4, 33, generator=g) * 10).to(torch.float8_e4m3fn).view(torch.uint8)
    n = 64 * 4 + 17
    p = torch.randn(n, generator=g)
    grad = torch.randn(n, generator=g)
    codes = [dynamic_codebook(True).values, dynamic_codebook(False).values]
    binary = [binary_codebook(True).values, binary_codebook(False).values]
    states8 = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g) for _ in range(2)]
    absmaxes = [torch.rand(5, generator=g) for _ in range(2)]
    hyper = OptimHyper(lr=1e-3, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=1e-3, eps=1e-8,
                       bias_correction1=0.1, bias_correction2_sqrt=0.03).as_list()
    return {
        "int8_mm": [((xq, w), {})],
        "int8_matmul_dequant": [((xq, xa, w, wa), {})],
        "int8_vectorwise_quant": [((x, 6.0), {}), ((x, 0.0), {}), ((x.bfloat16(), 6.0), {})],
        "int8_linear": [((x, w, wa, torch.randn(9, generator=g), 6.0), {}), ((x.half(), w, wa, None, 0.0), {}),
                        ((x.clone().requires_grad_(), w, wa, torch.randn(9, generator=g).requires_grad_(), 6.0), {})],
        "quantize_blockwise": [((v, code, 64), {}), ((v.bfloat16(), code, 128), {})],
        "quantize_blockwise.out": [((v, code, 64), {"out": torch.empty(3, 100, dtype=torch.uint8),
                                                     "absmax": torch.empty(5)})],
        "dequantize_blockwise": [((q, absmax, code, 64, torch.float32), {}), ((q, absmax, code, 64, torch.bfloat16), {})],
        "dequantize_blockwise.out": [((q, absmax, code, 64, torch.float32), {"out": torch.empty(300)})],
        "quantize_fp8": [((x, scale, torch.float8_e4m3fn, True), {}), ((x, scale, torch.float8_e5m2, False), {}),
                         ((x, torch.rand(5, 1, generator=g) + 0.1, torch.float8_e4m3fnuz, True), {})],
        "dequantize_fp8": [((fp8, scale, torch.float8_e4m3fn, torch.float32), {}),
                           ((fp8, torch.rand(4, 1, generator=g), torch.float8_e5m2, torch.bfloat16), {})],
        "fp8_linear": [((fp8, torch.tensor(0.5), fp8[:3].clone(), torch.rand(3, generator=g) + 0.1,
                         torch.randn(3, generator=g), torch.float8_e4m3fn, torch.float32), {}),
                       ((fp8, torch.rand(4, generator=g) + 0.1, fp8[:2].clone(), torch.tensor(2.0), None,
                         torch.float8_e5m2, torch.bfloat16), {})],
        "finite_amax": [((x, None), {}), ((x, 1), {})],
        "finite_minmax": [((x, None), {}), ((x, 0), {})],
        "quantize_int8": [((x, scale, torch.tensor(0, dtype=torch.int32), None, True), {}),
                          ((x, torch.rand(5, generator=g) + 0.1, torch.randint(0, 256, (5,), dtype=torch.int32,
                                                                               generator=g), 0, False), {}),
                          ((x.half(), scale, torch.tensor(3, dtype=torch.int32), None, False), {})],
        "optimizer_update": [
            (("adam", p.clone(), grad, [s.clone() for s in states8], [a.clone() for a in absmaxes], codes, hyper, 2, 64,
              [-1, 7]), {}),
            (("rmsprop", p.clone(), grad, [torch.rand(n, generator=g)], [], [], hyper, 1, 64, [-1]), {}),
            # bf16 parameter and gradient on the binary maps with power-of-two scales: the kernel's 16-bit passes
            (("adam", p.bfloat16(), grad.bfloat16(), [s.clone() for s in states8], [torch.full((5,), 2.0**-6)] * 2,
              binary, hyper, 2, 64, [-1, 7]), {}),
            (("lion", p.half(), grad.half(), [states8[0].clone()], [torch.full((5,), 2.0**-6)], binary[:1], hyper, 2,
              64, [-1]), {}),
        ],
        "optimizer_update_many": [
            (("adam", [p.clone(), p[:100].clone()], [grad, grad[:100].clone()],
              [s.clone() for s in states8] + [s[:100].clone() for s in states8],
              [a.clone() for a in absmaxes] + [a[:2].clone() for a in absmaxes], codes + codes, hyper + hyper, 2,
              [64, 64], [-1, 7, -1, 9], [torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)]), {}),
            (("rmsprop", [p.clone()], [grad], [torch.rand(n, generator=g)], [], [], hyper, 1, [64], [-1], []), {}),
        ],
        "optimizer_update_norm": [(("lamb", p, grad, states8, absmaxes, codes, hyper, 0, 64), {})],
    }


SAMPLES = _samples()


def _clone(a):
    """Own copies of tensor arguments (mutating ops write into them)."""
    if isinstance(a, list):
        return [_clone(t) for t in a]
    return a.clone() if isinstance(a, torch.Tensor) else a


def test_every_op_has_samples_and_a_reference():
    assert set(SAMPLES) == set(ops.SCHEMAS)
    assert set(ops.REFERENCES) == set(ops.SCHEMAS)


@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
@pytest.mark.parametrize("name", sorted(ops.SCHEMAS))
def test_opcheck(name, reference):
    op = ops.all_ops()[name]
    for args, kwargs in SAMPLES[name]:
        # opcheck mutates inputs of mutating ops; give each run its own copies
        a = tuple(_clone(t) for t in args)
        k = {key: _clone(t) for key, t in kwargs.items()}
        if reference:
            with reference_only():
                torch.library.opcheck(op, a, k)
        else:
            torch.library.opcheck(op, a, k)


@pytest.mark.parametrize("name", sorted(ops.SCHEMAS))
def test_fake_matches_real(name):
    """The fake implementation gives the real result's shapes and dtypes (what compile and export rely on)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops.all_ops()[name]
    for args, kwargs in SAMPLES[name]:
        real = op(*args, **kwargs)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            def conv(t):
                if isinstance(t, list):
                    return [conv(s) for s in t]
                return mode.from_tensor(t) if isinstance(t, torch.Tensor) else t

            fake = op(*[conv(t) for t in args], **{k: conv(v) for k, v in kwargs.items()})
        flat_r = real if isinstance(real, tuple) else (real,)
        flat_f = fake if isinstance(fake, tuple) else (fake,)
        for r, f in zip(flat_r, flat_f):
            if r is None:
                assert f is None
                continue
            assert r.shape == f.shape and r.dtype == f.dtype, (name, r.shape, f.shape, r.dtype, f.dtype)


def test_kernel_errors_keep_their_type():
    """A ValueError raised inside an op (a bad code, found at run time) reaches the caller unchanged."""
    bad = torch.full((256,), float("nan"))
    with pytest.raises(ValueError, match="finite"):
        ops.quantize_blockwise(torch.randn(100), bad, 64)
