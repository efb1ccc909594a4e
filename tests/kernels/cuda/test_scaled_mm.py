"""The CUDA ``fp8_linear`` kernel (``torch._scaled_mm``) without a GPU: torch._scaled_mm also runs on CPU
tensors, so the kernel's arguments and arithmetic are compared with the op's reference here, with the device
capability given explicitly; its applicability rules and the layout contract under FakeTensorMode."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from eightbit.functional.fp8_linear import fp8_linear_reference
from eightbit.kernels.cuda import fp8 as K

from .device import DEVICE, back, on

U = 2.0**-24
HOPPER = (9, 0)


def _codes(shape, gen, fmt=torch.float8_e4m3fn):
    return (torch.randn(shape, generator=gen) * 30).to(fmt).view(torch.uint8)


def _bound(xq, xs, wq, ws, fmt, k):
    """Both results within (gamma_K + 3u) * sum_j |x_j w_j| of the exact sum of code products times the scales
    (the reference scales each operand, then sums; _scaled_mm sums the exact code products, then scales)."""
    x = xq.view(fmt).double() * (xs.double().reshape(-1, 1) if xs.dim() else xs.double())
    w = wq.view(fmt).double() * (ws.double().reshape(-1, 1) if ws.dim() else ws.double())
    gamma = k * U / (1 - k * U)
    return 2 * (gamma + 3 * U) * (x.abs() @ w.abs().T)


@pytest.mark.parametrize("per_tensor", [True, False])
@pytest.mark.parametrize("m", [1, 33])
def test_scaled_mm_matches_reference(gen, per_tensor, m):
    k, n = 64, 48
    xq, wq = _codes((m, k), gen), _codes((n, k), gen)
    xs = torch.tensor(0.02) if per_tensor else torch.rand(m, generator=gen) * 0.1 + 0.01
    ws = torch.tensor(0.5) if per_tensor else torch.rand(n, generator=gen) + 0.1
    bias = torch.randn(n, generator=gen)
    got = back(K.fp8_linear(on(xq), on(xs), on(wq), on(ws), on(bias), torch.float8_e4m3fn, torch.float32,
                            capability=HOPPER))
    want = fp8_linear_reference(xq, xs, wq, ws, bias, torch.float8_e4m3fn, torch.float32)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    product = fp8_linear_reference(xq, xs, wq, ws, None, torch.float8_e4m3fn, torch.float32).abs().double()
    bound = _bound(xq, xs, wq, ws, torch.float8_e4m3fn, k) + 2 * U * (want.abs().double() + product)  # + bias
    if not per_tensor:  # row-wise scaling returns the product in bfloat16 (before the bias is added): one more
        bound = bound + 2.0**-8 * product  # rounding, at most half a bf16 ulp (2^-9 of the product, doubled)
    diff = (got.double() - want.double()).abs()
    assert (diff <= bound).all(), float((diff - bound).max())


def test_applicability():
    x, w = torch.empty(4, 64, dtype=torch.uint8), torch.empty(32, 64, dtype=torch.uint8)
    assert K.scaled_mm_applies(x, w, torch.float8_e4m3fn, (8, 9))
    assert K.scaled_mm_applies(x, w, torch.float8_e4m3fn, HOPPER)
    assert not K.scaled_mm_applies(x, w, torch.float8_e4m3fn, (8, 6))  # Ampere: no FP8 tensor cores
    assert not K.scaled_mm_applies(x, w, torch.float8_e4m3fn, None)  # not a CUDA device
    assert not K.scaled_mm_applies(x, w, torch.float8_e5m2, HOPPER)  # e5m2 x e5m2 unsupported
    assert not K.scaled_mm_applies(torch.empty(4, 60, dtype=torch.uint8), torch.empty(32, 60, dtype=torch.uint8),
                                   torch.float8_e4m3fn, HOPPER)  # K % 16
    assert not K.scaled_mm_applies(x, torch.empty(40, 64, dtype=torch.uint8), torch.float8_e4m3fn, HOPPER)  # N % 16
    assert K.fp8_linear(x, torch.tensor(1.0), w, torch.tensor(1.0), None, torch.float8_e4m3fn, torch.float32,
                        capability=(8, 0)) is NotImplemented


def test_layout_contract_under_fake_tensors():
    """Row-major a, column-major b (a view of the contiguous weight, no copy), [M, 1] and [1, N] float32 scales,
    bfloat16 output for row-wise scales; torch._scaled_mm's meta function accepts K = 60, which the device would
    reject, so the applicability check above is the only guard."""
    with FakeTensorMode():
        x, w = torch.empty(8, 64, dtype=torch.uint8), torch.empty(32, 64, dtype=torch.uint8)
        a, b, sa, sb, out_dtype = K.scaled_mm_args(x, torch.empty(8), w, torch.empty(32), torch.float8_e4m3fn)
        assert a.stride() == (64, 1) and b.shape == (64, 32) and b.stride() == (1, 64)
        assert sa.shape == (8, 1) and sb.shape == (1, 32) and sa.dtype == sb.dtype == torch.float32
        assert out_dtype == torch.bfloat16
        y = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
        assert y.shape == (8, 32) and y.dtype == torch.bfloat16
        *_, per_tensor_dtype = K.scaled_mm_args(x, torch.empty(()), w, torch.empty(()), torch.float8_e4m3fn)
        assert per_tensor_dtype is None
        a60 = torch.empty(8, 60, dtype=torch.float8_e4m3fn)
        torch._scaled_mm(a60, torch.empty(32, 60, dtype=torch.float8_e4m3fn).t(), scale_a=torch.empty(()),
                         scale_b=torch.empty(()), out_dtype=torch.float32)  # accepted by the meta function


@pytest.mark.skipif(DEVICE.type != "cpu", reason="on a GPU the real LinearFP8 path runs _scaled_mm itself")
def test_linear_fp8_reaches_the_op(gen, monkeypatch):
    """LinearFP8's forward goes through the fp8_linear op: the kernel sees its codes (patched in here with the
    Hopper capability) and the layer's output equals the kernel's."""
    from eightbit.functional import ops
    from eightbit.nn import LinearFP8

    seen = []

    def kernel(*args):
        seen.append(args)
        return K.fp8_linear(*args, capability=HOPPER)

    layer = LinearFP8.from_linear(torch.nn.Linear(64, 32), activation="dynamic")
    x = torch.randn(3, 64, generator=gen)
    monkeypatch.setattr(ops, "fp8_linear", kernel)
    y = layer(x)
    assert len(seen) == 1 and seen[0][0].shape == (3, 64) and seen[0][1].shape == (3,)
    assert torch.equal(y, K.fp8_linear(*seen[0], capability=HOPPER))
