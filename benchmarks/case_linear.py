"""Case "linear": one out x in linear layer (4096 x 4096 weight, M = 1/32/512 rows) across int8 and float paths.

Inputs are Gaussian clipped to +-5, so none reaches LLM.int8()'s 6.0 threshold; the outlier variant plants
4 of 4096 hidden dimensions (0.1%) with magnitudes 8..20 in every row, so eightbit must decompose them.
Floor: max(int8 weight bytes / measured bandwidth, 2*M*N*K / measured fp32 GEMM peak).
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings

import torch

from .common import Built, Context, Impl, Row, Unavailable, measure, rel_error

OUTLIER_COLS = 4


def sizes(quick: bool) -> tuple[int, tuple[int, ...]]:
    """(square weight size, row counts M)."""
    return (1024, (1, 32)) if quick else (4096, (1, 32, 512))


def make_inputs(m: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, with outliers) activations, (m, k) fp32. Plain has no |x| >= 6; the other has OUTLIER_COLS
    columns whose every entry is +-[8, 20]."""
    x = torch.randn(m, k, generator=gen).clamp_(-5.0, 5.0)
    xo = x.clone()
    cols = torch.randperm(k, generator=gen)[:OUTLIER_COLS]
    sign = torch.randint(0, 2, (m, OUTLIER_COLS), generator=gen).float() * 2 - 1
    xo[:, cols] = sign * (8.0 + 12.0 * torch.rand(m, OUTLIER_COLS, generator=gen))
    return x, xo


def _forward(module: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, **extra) -> Built:
    def fn():
        with torch.inference_mode():
            return module(x)

    return Built(fn, rel_error=rel_error(fn(), ref), extra=extra)


def _eightbit(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    from eightbit.nn import Linear8bitLt

    module = Linear8bitLt.from_linear(linear, threshold=6.0)
    return _forward(module, x, ref)


def _torch_bf16(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    module = copy.deepcopy(linear).to(torch.bfloat16)
    return _forward(module, x.to(torch.bfloat16), ref)


def ort_dynamic_int8_session(linear: torch.nn.Linear, x: torch.Tensor, *, spinning: bool = True):
    """A callable running ONNX Runtime's dynamic int8 MatMul of ``linear``'s weight on ``x`` (per-channel int8
    weights, 2 threads); ``spinning=False`` stops idle worker threads from spinning (many sessions in a row).
    Raises Unavailable without onnx/onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise Unavailable(f"onnxruntime/onnx not installed ({e.name})") from e
    k, n = linear.in_features, linear.out_features
    weight_t = linear.weight.detach().t().contiguous().numpy()  # (K, N): ONNX MatMul computes X @ B
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(weight_t, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        onnx.save(model, src)
        # per_channel=True: faster and more accurate than the per-tensor default here, so the stronger peer
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(dst, opts, providers=["CPUExecutionProvider"])
    feed = {"X": x.numpy()}
    return lambda: session.run(None, feed)[0]


def _onnxruntime(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    fn = ort_dynamic_int8_session(linear, x)
    return Built(fn, rel_error=rel_error(torch.from_numpy(fn()), ref), extra={"per_channel": True})


def _torch_ao_dynamic(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice pointing to torchao
        module = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(copy.deepcopy(linear)), {torch.nn.Linear}, dtype=torch.qint8
        )
    return _forward(module, x, ref, engine=torch.backends.quantized.engine)


def _torchao(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    try:
        from torchao.quantization import quantize_
    except ImportError as e:
        raise Unavailable("torchao not installed") from e
    import torchao.quantization as tq

    config_cls = getattr(tq, "Int8DynamicActivationInt8WeightConfig", None)
    if config_cls is None:  # pre-0.10 spelling
        config = tq.int8_dynamic_activation_int8_weight()
    else:
        config = config_cls()
    module = torch.nn.Sequential(copy.deepcopy(linear))
    quantize_(module, config)
    return _forward(module, x, ref, config=type(config).__name__)


def _bitsandbytes(linear: torch.nn.Linear, x: torch.Tensor, ref: torch.Tensor) -> Built:
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise Unavailable("bitsandbytes not installed") from e
    module = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=False, has_fp16_weights=False, threshold=6.0
    )
    module.weight = bnb.nn.Int8Params(linear.weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    module = module.to("cpu")  # bitsandbytes quantizes on the device move
    if module.weight.dtype != torch.int8:
        raise Unavailable("bitsandbytes did not quantize the weight on CPU")
    return _forward(module, x, ref)


def run(ctx: Context) -> list[Row]:
    """All configurations of the case, as result rows."""
    size, ms = sizes(ctx.quick)
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(size, size, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(size, size, generator=gen) / size**0.5)
    w64 = linear.weight.detach().to(torch.float64)
    rows: list[Row] = []
    for m in ms:
        x, xo = make_inputs(m, size, gen)
        ref, ref_o = x.double() @ w64.t(), xo.double() @ w64.t()
        impls = [
            Impl("eightbit Linear8bitLt", lambda: _eightbit(linear, x, ref)),
            Impl("eightbit Linear8bitLt, 0.1% outliers", lambda: _eightbit(linear, xo, ref_o)),
            Impl("torch fp32 nn.Linear", lambda: _forward(linear, x, ref)),
            Impl("torch bf16 nn.Linear", lambda: _torch_bf16(linear, x, ref)),
            Impl("onnxruntime dynamic int8", lambda: _onnxruntime(linear, x, ref)),
            Impl("torch.ao quantize_dynamic int8", lambda: _torch_ao_dynamic(linear, x, ref)),
            Impl("torchao int8 dyn-act int8-weight", lambda: _torchao(linear, x, ref)),
            Impl("bitsandbytes Linear8bitLt", lambda: _bitsandbytes(linear, x, ref)),
        ]
        floor = None
        if ctx.bandwidth_gbps and ctx.fp32_gflops:
            # compute: the exact int8 step's measured rate on every core (fp32 GEMM peak if not measured)
            cores = torch.get_num_threads()
            compute = (m * size * size / (cores * ctx.int8_exact_gmacs * 1e9) if ctx.int8_exact_gmacs
                       else 2 * m * size * size / (ctx.fp32_gflops * 1e9))
            floor = max(size * size / (ctx.bandwidth_gbps * 1e9), compute)
        rows += measure(ctx, "linear", f"{size}x{size}, M={m}", impls, floor_s=floor)
    return rows
