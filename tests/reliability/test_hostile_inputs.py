"""Hostile inputs: wrong types, dtypes, shapes, devices (meta) and bad argument values must give a
TypeError/ValueError whose message names the offending argument, for every public functional entry
point, every quantization config and every optimizer constructor. Known defects are strict xfails."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import eightbit.optim as O
from eightbit import FP8Config, Int8Config, Int8StaticConfig
from eightbit.functional import (
    BlockwiseState,
    create_dynamic_map,
    create_linear_map,
    create_quantile_map,
    dequantize_blockwise,
    dequantize_fp8,
    dequantize_int8,
    dequantize_vectorwise,
    int8_linear,
    int8_mm,
    quantize_blockwise,
    quantize_fp8,
    quantize_int8,
    quantize_vectorwise,
)
from eightbit.functional.fp8 import FP8_FORMATS
from eightbit.nn import Linear8bitLt

X = torch.randn(4, 8)
Q8, A8 = quantize_vectorwise(torch.randn(3, 8))  # a valid int8 weight [3, 8] + absmax [3]
I8 = torch.randint(-128, 128, (3, 8), dtype=torch.int8)
QB, SB = quantize_blockwise(torch.randn(300), blocksize=64)
QF, SF = quantize_fp8(X)
QI, SI, ZI = quantize_int8(X, symmetric=False)
META = "meta"


def _defect(reason: str):
    return pytest.mark.xfail(strict=True, reason="defect: " + reason)


def _state(**changes) -> BlockwiseState:
    fields = dict(absmax=SB.absmax, code=SB.code, blocksize=SB.blocksize, shape=SB.shape, dtype=SB.dtype)
    return BlockwiseState(**(fields | changes))


# (call, expected exception(s), regex the message must match: the argument's name)
FUNCTIONAL = [
    # ---- vector-wise
    pytest.param(lambda: quantize_vectorwise([1.0, 2.0]), TypeError, "x", id="vw-x-list"),
    pytest.param(lambda: quantize_vectorwise(X.int()), TypeError, "x", id="vw-x-int32"),
    pytest.param(lambda: quantize_vectorwise(X.double()), TypeError, "x", id="vw-x-float64"),
    pytest.param(lambda: quantize_vectorwise(torch.tensor(1.0)), ValueError, "x", id="vw-x-scalar"),
    pytest.param(lambda: quantize_vectorwise(X, dim=2), ValueError, "dim", id="vw-dim-out-of-range"),
    pytest.param(lambda: quantize_vectorwise(X, dim=1.0), TypeError, "dim", id="vw-dim-float"),
    pytest.param(lambda: dequantize_vectorwise(Q8.float(), A8), TypeError, "q", id="dvw-q-float"),
    pytest.param(lambda: dequantize_vectorwise(Q8, A8.double()), TypeError, "absmax", id="dvw-absmax-float64"),
    pytest.param(lambda: dequantize_vectorwise(Q8, A8[:2]), ValueError, "absmax", id="dvw-absmax-shape"),
    pytest.param(lambda: dequantize_vectorwise(Q8, A8, dtype=torch.int8), TypeError, "dtype", id="dvw-dtype-int8"),
    pytest.param(lambda: dequantize_vectorwise(Q8, A8.to(META)), (TypeError, ValueError), "absmax|device",
                 id="dvw-absmax-meta"),
    # ---- int8_mm
    pytest.param(lambda: int8_mm(I8.float(), I8), TypeError, "a", id="mm-a-float"),
    pytest.param(lambda: int8_mm(I8, I8.to(torch.uint8)), TypeError, "b", id="mm-b-uint8"),
    pytest.param(lambda: int8_mm([[1]], I8), TypeError, "a", id="mm-a-list"),
    pytest.param(lambda: int8_mm(I8, I8[0]), ValueError, "b", id="mm-b-1d"),
    pytest.param(lambda: int8_mm(I8, I8[:, :5]), ValueError, "K", id="mm-k-mismatch"),
    pytest.param(lambda: int8_mm(I8.to(META), I8), ValueError, "device", id="mm-a-meta"),
    # ---- int8_linear
    pytest.param(lambda: int8_linear(X.int(), Q8, A8), TypeError, "x", id="lin-x-int"),
    pytest.param(lambda: int8_linear(X.to(torch.complex64), Q8, A8), TypeError, "x", id="lin-x-complex"),
    pytest.param(lambda: int8_linear(X[:, :7], Q8, A8), ValueError, "x|last dim", id="lin-x-features"),
    pytest.param(lambda: int8_linear(X, Q8.float(), A8), TypeError, "weight_int8", id="lin-w-float"),
    pytest.param(lambda: int8_linear(X, Q8[0], A8), ValueError, "weight_int8", id="lin-w-1d"),
    pytest.param(lambda: int8_linear(X, Q8, A8[:2]), ValueError, "weight_absmax", id="lin-absmax-shape"),
    pytest.param(lambda: int8_linear(X, Q8, A8.half()), TypeError, "weight_absmax", id="lin-absmax-fp16"),
    pytest.param(lambda: int8_linear(X, Q8, A8, torch.zeros(2)), ValueError, "bias", id="lin-bias-shape"),
    pytest.param(lambda: int8_linear(X, Q8, A8, torch.zeros(3, dtype=torch.int64)), TypeError, "bias", id="lin-bias-int"),
    pytest.param(lambda: int8_linear(X, Q8, A8, threshold=-1.0), ValueError, "threshold", id="lin-threshold-negative"),
    pytest.param(lambda: int8_linear(X, Q8, A8, threshold=float("nan")), ValueError, "threshold", id="lin-threshold-nan"),
    pytest.param(lambda: int8_linear(X, Q8, A8, threshold="6"), TypeError, "threshold", id="lin-threshold-str"),
    pytest.param(lambda: int8_linear(X.to(META), Q8, A8), ValueError, "device", id="lin-x-meta"),
    pytest.param(lambda: int8_linear(X, Q8, A8.to(META)), ValueError, "weight_absmax.*device", id="lin-absmax-meta"),
    pytest.param(lambda: int8_linear(torch.zeros(2, 0), torch.zeros(3, 0, dtype=torch.int8), torch.ones(3)),
                 ValueError, "weight_int8", id="lin-k-zero"),
    # ---- block-wise
    pytest.param(lambda: quantize_blockwise(X, blocksize=100), ValueError, "blocksize", id="bw-blocksize-100"),
    pytest.param(lambda: quantize_blockwise(X, blocksize=32), ValueError, "blocksize", id="bw-blocksize-32"),
    pytest.param(lambda: quantize_blockwise(X, blocksize=32768), ValueError, "blocksize", id="bw-blocksize-32768"),
    pytest.param(lambda: quantize_blockwise(X, blocksize=2048.0), ValueError, "blocksize", id="bw-blocksize-float"),
    pytest.param(lambda: quantize_blockwise(X, blocksize=-64), ValueError, "blocksize", id="bw-blocksize-negative"),
    pytest.param(lambda: quantize_blockwise(X.long()), TypeError, "x", id="bw-x-int64"),
    pytest.param(lambda: quantize_blockwise("x"), TypeError, "x", id="bw-x-str"),
    pytest.param(lambda: quantize_blockwise(X, code=torch.zeros(10)), ValueError, "code", id="bw-code-size"),
    pytest.param(lambda: quantize_blockwise(X, code=SB.code.double()), TypeError, "code", id="bw-code-float64"),
    pytest.param(lambda: quantize_blockwise(X, code=torch.linspace(-1, 1, 256).flip(0)), ValueError, "code",
                 id="bw-code-unsorted"),
    pytest.param(lambda: quantize_blockwise(X, code=torch.full((256,), float("nan"))), ValueError, "code", id="bw-code-nan"),
    pytest.param(lambda: quantize_blockwise(X, code=torch.zeros(16, 16)), ValueError, "code", id="bw-code-2d"),
    pytest.param(lambda: dequantize_blockwise(QB.int(), SB), TypeError, "q", id="dbw-q-int32"),
    pytest.param(lambda: dequantize_blockwise(QB, {"absmax": SB.absmax}), TypeError, "state", id="dbw-state-dict"),
    pytest.param(lambda: dequantize_blockwise(QB[:50], SB), ValueError, "q|elements", id="dbw-q-size"),
    pytest.param(lambda: dequantize_blockwise(QB, _state(absmax=SB.absmax[:2])), ValueError, "absmax", id="dbw-absmax-count"),
    pytest.param(lambda: dequantize_blockwise(QB, _state(blocksize=100)), ValueError, "blocksize", id="dbw-blocksize-100"),
    # ---- fp8
    pytest.param(lambda: quantize_fp8(X, "e3m4"), ValueError, "format", id="fp8-format-unknown"),
    pytest.param(lambda: quantize_fp8(X, 3), ValueError, "format", id="fp8-format-int"),
    pytest.param(lambda: quantize_fp8(X.int()), TypeError, "x", id="fp8-x-int"),
    pytest.param(lambda: quantize_fp8(X, axis=2), ValueError, "axis", id="fp8-axis-range"),
    pytest.param(lambda: quantize_fp8(X, axis=1.0), TypeError, "axis", id="fp8-axis-float"),
    pytest.param(lambda: quantize_fp8(X, scale=0.0), ValueError, "scale", id="fp8-scale-zero"),
    pytest.param(lambda: quantize_fp8(X, scale=-1.0), ValueError, "scale", id="fp8-scale-negative"),
    pytest.param(lambda: quantize_fp8(X, scale=float("nan")), ValueError, "scale", id="fp8-scale-nan"),
    pytest.param(lambda: quantize_fp8(X, scale=float("inf")), ValueError, "scale", id="fp8-scale-inf"),
    pytest.param(lambda: quantize_fp8(X, scale="1"), TypeError, "scale", id="fp8-scale-str"),
    pytest.param(lambda: quantize_fp8(X, scale=torch.ones(3), axis=0), ValueError, "scale", id="fp8-scale-shape"),
    pytest.param(lambda: quantize_fp8(X, scale=torch.ones((), dtype=torch.int32)), TypeError, "scale", id="fp8-scale-int-tensor"),
    pytest.param(lambda: quantize_fp8(X, saturate="no"), TypeError, "saturate", id="fp8-saturate-str"),
    pytest.param(lambda: quantize_fp8(X, saturate=0), TypeError, "saturate", id="fp8-saturate-int"),
    pytest.param(lambda: quantize_fp8(X, saturate=None), TypeError, "saturate", id="fp8-saturate-none"),
    pytest.param(lambda: dequantize_fp8(X, SF), TypeError, "q", id="dfp8-q-float32"),
    pytest.param(lambda: dequantize_fp8(QF, SF, "e5m2"), TypeError, "q", id="dfp8-format-mismatch"),
    pytest.param(lambda: dequantize_fp8(QF, SF, "e9m9"), ValueError, "format", id="dfp8-format-unknown"),
    pytest.param(lambda: dequantize_fp8(QF, SF, dtype=torch.int8), (TypeError, ValueError), "dtype", id="dfp8-dtype-int8"),
    pytest.param(lambda: dequantize_fp8(QF, -1.0), ValueError, "scale", id="dfp8-scale-negative"),
    pytest.param(lambda: dequantize_fp8(QF, torch.ones(7), axis=0), ValueError, "scale", id="dfp8-scale-shape"),
    # ---- affine int8
    pytest.param(lambda: quantize_int8([1.0]), TypeError, "x", id="int8-x-list"),
    pytest.param(lambda: quantize_int8(X.int()), TypeError, "x", id="int8-x-int"),
    pytest.param(lambda: quantize_int8(X, axis=5), ValueError, "axis", id="int8-axis-range"),
    pytest.param(lambda: quantize_int8(X, scale=-1.0), ValueError, "scale", id="int8-scale-negative"),
    pytest.param(lambda: quantize_int8(X, scale=torch.ones(5), axis=0), ValueError, "scale", id="int8-scale-shape"),
    pytest.param(lambda: quantize_int8(X, scale=1.0, symmetric=False), ValueError, "zero_point", id="int8-zp-missing"),
    pytest.param(lambda: quantize_int8(X, scale=1.0, zero_point=300, symmetric=False), ValueError, "zero_point", id="int8-zp-range"),
    pytest.param(lambda: quantize_int8(X, scale=1.0, zero_point=1.5, symmetric=False), TypeError, "zero_point", id="int8-zp-float"),
    pytest.param(lambda: quantize_int8(X, scale=1.0, zero_point=3), ValueError, "zero_point", id="int8-zp-symmetric"),
    pytest.param(lambda: quantize_int8(X, symmetric="no"), TypeError, "symmetric", id="int8-symmetric-str"),
    pytest.param(lambda: quantize_int8(X, symmetric=1), TypeError, "symmetric", id="int8-symmetric-int"),
    pytest.param(lambda: dequantize_int8(X, SI), TypeError, "q", id="dint8-q-float"),
    pytest.param(lambda: dequantize_int8(QI, SI, ZI, dtype=torch.int32), (TypeError, ValueError), "dtype", id="dint8-dtype"),
    pytest.param(lambda: dequantize_int8(QI, 0.0), ValueError, "scale", id="dint8-scale-zero"),
    pytest.param(lambda: dequantize_int8(QI, SI, torch.zeros(3, dtype=torch.int32)), ValueError, "zero_point", id="dint8-zp-shape"),
    # ---- code maps
    pytest.param(lambda: create_dynamic_map(signed="no"), TypeError, "signed", id="dynmap-signed-str"),
    pytest.param(lambda: create_linear_map(signed=0), TypeError, "signed", id="linmap-signed-int"),
    pytest.param(lambda: create_quantile_map(X, signed="yes"), TypeError, "signed", id="qmap-signed-str"),
]


@pytest.mark.parametrize("call, exc, match", FUNCTIONAL)
def test_functional_rejects(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# Meta tensors are supported (not rejected): shapes and dtypes only, so layers can be built on "meta".
@pytest.mark.parametrize("axis", [None, 0])
def test_quantizers_on_meta_tensors(axis):
    xm = torch.empty(4, 100, device=META)
    q, state = quantize_blockwise(xm, blocksize=64)
    assert q.is_meta and q.shape == xm.shape and q.dtype == torch.uint8
    assert state.absmax.is_meta and state.absmax.shape == (7,) and state.absmax.dtype == torch.float32
    scale_shape = () if axis is None else (4,)
    for fmt in ("e4m3", "e5m2"):
        for saturate in (True, False):
            q, s = quantize_fp8(xm, fmt, axis=axis, saturate=saturate)
            assert q.is_meta and q.shape == xm.shape and q.dtype == FP8_FORMATS[fmt].dtype
            assert s.is_meta and s.shape == scale_shape and s.dtype == torch.float32
            assert dequantize_fp8(q, s, fmt, axis=axis).is_meta
    for symmetric in (True, False):
        q, s, zp = quantize_int8(xm, axis=axis, symmetric=symmetric)
        assert q.is_meta and q.shape == xm.shape and q.dtype == (torch.int8 if symmetric else torch.uint8)
        assert s.is_meta and s.shape == scale_shape and s.dtype == torch.float32
        assert zp.is_meta and zp.shape == scale_shape and zp.dtype == torch.int32
        assert dequantize_int8(q, s, zp, axis=axis).shape == xm.shape


# ---------------------------------------------------------------- configs and modules
CONFIGS = [
    pytest.param(lambda: Int8Config(threshold=-1.0), ValueError, "threshold", id="int8cfg-threshold-negative"),
    pytest.param(lambda: Int8Config(threshold=float("nan")), ValueError, "threshold", id="int8cfg-threshold-nan"),
    pytest.param(lambda: Int8Config(threshold="6"), TypeError, "threshold", id="int8cfg-threshold-str"),
    pytest.param(lambda: Int8Config(skip_modules="lm_head"), ValueError, "skip_modules", id="int8cfg-skip-str"),
    pytest.param(lambda: Int8Config(skip_modules=(1,)), ValueError, "skip_modules", id="int8cfg-skip-int"),
    pytest.param(lambda: FP8Config(format="e3m4"), ValueError, "format", id="fp8cfg-format"),
    pytest.param(lambda: FP8Config(format="E4M3"), ValueError, "format", id="fp8cfg-format-case"),
    pytest.param(lambda: FP8Config(activation="lazy"), ValueError, "activation", id="fp8cfg-activation"),
    pytest.param(lambda: FP8Config(calibration="kl"), ValueError, "calibration", id="fp8cfg-calibration"),
    pytest.param(lambda: FP8Config(percentile=0), ValueError, "percentile", id="fp8cfg-percentile-0"),
    pytest.param(lambda: FP8Config(percentile=100.5), ValueError, "percentile", id="fp8cfg-percentile-high"),
    pytest.param(lambda: FP8Config(percentile="99"), TypeError, "percentile", id="fp8cfg-percentile-str"),
    pytest.param(lambda: FP8Config(weight_granularity="row"), ValueError, "weight_granularity", id="fp8cfg-granularity"),
    pytest.param(lambda: FP8Config(skip_modules="lm_head"), ValueError, "skip_modules", id="fp8cfg-skip-str"),
    pytest.param(lambda: FP8Config(compute_dtype=torch.int8), ValueError, "compute_dtype", id="fp8cfg-compute-dtype"),
    pytest.param(lambda: Int8StaticConfig(symmetric="yes"), ValueError, "symmetric", id="i8scfg-symmetric"),
    pytest.param(lambda: Int8StaticConfig(calibration="max"), ValueError, "calibration", id="i8scfg-calibration"),
    pytest.param(lambda: Int8StaticConfig(percentile=-1), ValueError, "percentile", id="i8scfg-percentile"),
    pytest.param(lambda: Int8StaticConfig(weight_granularity="block"), ValueError, "weight_granularity", id="i8scfg-granularity"),
    pytest.param(lambda: Int8StaticConfig(compute_dtype=torch.float64), ValueError, "compute_dtype", id="i8scfg-compute-dtype"),
    pytest.param(lambda: Int8StaticConfig(skip_modules=(None,)), ValueError, "skip_modules", id="i8scfg-skip-none"),
    pytest.param(lambda: Linear8bitLt(0, 4), ValueError, "in_features", id="lin8-in-features-0"),
    pytest.param(lambda: Linear8bitLt(4, 4, threshold=-1), ValueError, "threshold", id="lin8-threshold"),
    pytest.param(lambda: Linear8bitLt.from_linear(nn.Conv1d(2, 2, 1)), TypeError, "linear", id="lin8-from-conv"),
    pytest.param(lambda: Linear8bitLt.from_linear(_nan_linear()), ValueError, "NaN|Inf", id="lin8-from-nan-weight"),
]


def _nan_linear() -> nn.Linear:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    return lin


@pytest.mark.parametrize("call, exc, match", CONFIGS)
def test_configs_and_modules_reject(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- optimizer constructors
OPTIMIZERS = [getattr(O, n + bits) for n in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LAMB", "LARS", "Lion") for bits in ("8bit", "32bit")]
BAD_HYPER = [
    ("lr", -1e-3, "lr"), ("lr", float("nan"), "lr"), ("lr", "0.1", "lr"),
    ("betas", (1.0, 0.9), "betas"), ("betas", (-0.1, 0.9), "betas"), ("betas", (0.9, 1.5), "betas"),
    ("betas", (0.9,), "betas"), ("eps", -1e-8, "eps"), ("weight_decay", -0.1, "weight_decay"),
    ("blocksize", 100, "blocksize"), ("optim_bits", 4, "optim_bits"), ("nonfinite", "ignore", "nonfinite"),
    ("percentile_clipping", 0, "percentile_clipping"), ("max_unorm", -1.0, "max_unorm"),
]
_VALID = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0, "blocksize": 256, "optim_bits": 32,
          "nonfinite": "skip", "percentile_clipping": 100, "max_unorm": 0.02}


def _extra(cls) -> dict:
    return {"momentum": 0.9} if cls.__name__.startswith(("SGD", "LARS")) else {}


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("key, value, match", BAD_HYPER, ids=[f"{k}={v!r}" for k, v, _ in BAD_HYPER])
def test_optimizer_constructor_rejects(cls, key, value, match):
    params = [nn.Parameter(torch.randn(10))]
    kw = _extra(cls)
    if key != "lr":
        try:  # only hyperparameters the optimizer takes
            cls(params, **kw, **{"lr": 1e-3, key: _VALID[key]})
        except TypeError:
            pytest.skip(f"{cls.__name__} has no {key}")
    call_kw = {**kw, key: value} if key != "lr" else {**kw, "lr": value}
    with pytest.raises((TypeError, ValueError), match=match):
        cls(params, **call_kw)
