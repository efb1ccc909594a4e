"""Case "models": whole models end to end, every method on the same weights and inputs, timed interleaved.

Configurations: the built-in real model MiniLM (all-MiniLM-L6-v2) at batch 1 (one sentence) and batch 64
(64 shipped evaluation sentences, padded), and the toy GPT-2 with planted outlier features
(`eightbit.models.toy`, 4 layers x 256, 512 positions) at 1 and 512 tokens. Implementations: torch fp32 and
bf16, torch.ao dynamic int8 (``quantize_dynamic`` on the nn.Linear layers; GPT-2's Conv1D layers are first
rewritten as nn.Linear with the same weights), ONNX Runtime's dynamic int8 model exported from the same fp32
weights (MatMul weights per channel, the most accurate of its dynamic settings here), and eightbit's
LLM.int8() (threshold 6, and threshold 0: no outlier decomposition), FP8 E4M3 (static and dynamic activations) and
INT8 static, all through ``eightbit.quantize_model``. Static methods are calibrated on the shipped calibration
sentences (MiniLM) or 8 random sequences (GPT-2) outside the timed region.

Accuracy (``rel_error``) is against the model run in float64: for MiniLM the sentence embeddings (mean-pooled
over real tokens, L2-normalised; ``extra.cosine_min`` is the worst sentence's cosine), for GPT-2 the logits.
Everything runs under ``torch.inference_mode``.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .common import Built, Context, Impl, Row, Unavailable, measure, rel_error

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------- the models and their inputs
def _minilm(ctx: Context) -> tuple[nn.Module, list[tuple[str, Batch]], list[Batch], str]:
    from eightbit.data.sentences import calibration_sentences, eval_sentences
    from eightbit.models.local import make_batches
    from eightbit.models.minilm import load_minilm

    model, tok = load_minilm()
    big = 8 if ctx.quick else 64
    sents = eval_sentences()
    configs = [("batch 1", make_batches(sents[:1], tok, model)[0]),
               (f"batch {big}", make_batches(sents[:big], tok, model, batch_size=big)[0])]
    calib = make_batches(calibration_sentences()[: 8 if ctx.quick else 32], tok, model)
    return model, configs, calib, "embedding"


def _gpt2(ctx: Context) -> tuple[nn.Module, list[tuple[str, Batch]], list[Batch], str]:
    from eightbit.models.toy import build_gpt2_with_outliers

    model = build_gpt2_with_outliers(n_positions=512)
    vocab, long = model.config.vocab_size, 64 if ctx.quick else 512
    ids = lambda n, s: torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(s))  # noqa: E731
    calib = [{"input_ids": torch.randint(0, vocab, (8, 64), generator=torch.Generator().manual_seed(2))}]
    # explicit mask and positions: without them GPT-2's mask code uses aten::diff, which ONNX export lacks
    full = lambda t: {"input_ids": t, "attention_mask": torch.ones_like(t), "position_ids": torch.arange(t.shape[1])[None]}  # noqa: E731
    return model, [("1 token", full(ids(1, 1))), (f"{long} tokens", full(ids(long, 3)))], calib, "logits"


class _Forward(nn.Module):
    """The model as a function of positional tensors returning one tensor (what ONNX export and the timing
    loop call): MiniLM's last hidden state, GPT-2's logits."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], kind: str) -> None:
        super().__init__()
        self.model, self.keys, self.kind = model, keys, kind

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = dict(zip(self.keys, tensors))
        if self.kind == "logits":
            return self.model(**kw, use_cache=False).logits
        return self.model(**kw).last_hidden_state


def _score(kind: str, out: torch.Tensor, ref: torch.Tensor, batch: Batch) -> tuple[float, dict[str, Any]]:
    """(relative error, extra) of ``out`` against the float64 output ``ref``."""
    if kind == "logits":
        return rel_error(out, ref), {}
    mask = batch["attention_mask"].unsqueeze(-1).to(torch.float64)
    emb = lambda h: nn.functional.normalize((h.to(torch.float64) * mask).sum(1) / mask.sum(1), dim=-1)  # noqa: E731
    e, r = emb(out), emb(ref)
    return rel_error(e, r), {"cosine_min": (e * r).sum(-1).min().item()}


# ---------------------------------------------------------------- implementations
def _torch_fn(fwd: _Forward, args: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    def fn() -> torch.Tensor:
        with torch.inference_mode():
            return fwd(*args)
    return fn


def _built(fn: Callable[[], torch.Tensor], kind: str, ref: torch.Tensor, batch: Batch, **extra: Any) -> Built:
    err, more = _score(kind, fn().float(), ref, batch)
    return Built(fn, rel_error=err, extra={**more, **extra})


def _weight_mib(model: nn.Module) -> float:
    from eightbit.quantize.convert import memory_footprint

    return memory_footprint(model) / 2**20


def _conv1d_as_linear(model: nn.Module) -> nn.Module:
    """GPT-2's transformers Conv1D layers replaced in place by eightbit's nn.Linear view of them (`as_linear`),
    so that torch.ao's module-type-based quantize_dynamic sees them."""
    from eightbit.quantize.convert import as_linear, is_conv1d

    for name, child in list(model.named_children()):
        if is_conv1d(child):
            setattr(model, name, as_linear(child))
        else:
            _conv1d_as_linear(child)
    return model


def _torch_ao(model: nn.Module) -> nn.Module:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise Unavailable("torch.ao.quantization is not available in this torch") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(_conv1d_as_linear(copy.deepcopy(model)), {nn.Linear}, dtype=torch.qint8)


def _eightbit(model: nn.Module, config: Any, calib: list[Batch]) -> nn.Module:
    import eightbit

    return eightbit.quantize_model(copy.deepcopy(model), config, calibration_data=calib)


def _onnxruntime(fwd: _Forward, args: tuple[torch.Tensor, ...], kind: str, ref: torch.Tensor, batch: Batch) -> Built:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise Unavailable(f"onnxruntime not installed ({e.name})") from e
    axes = {k: {0: "batch", 1: "tokens"} for k in fwd.keys}
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        torch.onnx.export(fwd, args, src, dynamo=False, input_names=list(fwd.keys), output_names=["out"],
                          dynamic_axes=axes, opset_version=17)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        # its idle threads otherwise spin on the cores after each run, slowing whatever the harness times next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(dst, opts, providers=["CPUExecutionProvider"])
    feeds = {k: a.numpy() for k, a in zip(fwd.keys, args)}
    return _built(lambda: torch.from_numpy(session.run(None, feeds)[0]), kind, ref, batch)


def _impls(model: nn.Module, model64: nn.Module, keys: tuple[str, ...], kind: str, batch: Batch,
           calib: list[Batch]) -> list[Impl]:
    import eightbit

    args = tuple(batch[k] for k in keys)
    with torch.inference_mode():
        ref = _Forward(model64, keys, kind)(*args)

    def module(make: Callable[[], nn.Module]) -> Callable[[], Built]:
        def build() -> Built:
            m = make()
            return _built(_torch_fn(_Forward(m, keys, kind), args), kind, ref, batch, weight_mib=_weight_mib(m))
        return build

    eb = lambda cfg: module(lambda: _eightbit(model, cfg, calib))  # noqa: E731
    return [
        Impl("torch fp32", module(lambda: model)),
        Impl("torch bf16", module(lambda: copy.deepcopy(model).to(torch.bfloat16))),
        Impl("torch.ao dynamic int8", module(lambda: _torch_ao(model))),
        # the exporter is handed a copy: tracing leaves state behind in the model (later float64 runs disagreed)
        Impl("onnxruntime dynamic int8",
             lambda: _onnxruntime(_Forward(copy.deepcopy(model), keys, kind), args, kind, ref, batch)),
        Impl("eightbit LLM.int8() t=6", eb(eightbit.Int8Config(threshold=6.0))),
        # the same without the outlier decomposition: the work torch.ao does (per-row instead of per-tensor
        # scales), so the difference between the two rows is what the decomposition costs
        Impl("eightbit LLM.int8() t=0", eb(eightbit.Int8Config(threshold=0.0))),
        Impl("eightbit FP8 e4m3 static", eb(eightbit.FP8Config(format="e4m3", activation="static"))),
        Impl("eightbit FP8 e4m3 dynamic", eb(eightbit.FP8Config(format="e4m3", activation="dynamic"))),
        Impl("eightbit INT8 static", eb(eightbit.Int8StaticConfig(calibration="minmax"))),
    ]


def run(ctx: Context) -> list[Row]:
    """All configurations of the case, as result rows."""
    rows: list[Row] = []
    for label, load in (("MiniLM", _minilm), ("GPT-2 toy, outliers", _gpt2)):
        try:
            model, configs, calib, kind = load(ctx)
        except (ImportError, RuntimeError) as e:
            rows.append(Row("models", label, "torch fp32", "unavailable", reason=f"{type(e).__name__}: {e}"[:160]))
            continue
        model64 = copy.deepcopy(model).double()  # the float64 reference, shared by the model's configurations
        for name, batch in configs:
            keys = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids") if k in batch)
            tokens = int(batch["input_ids"].numel())
            rows += measure(ctx, "models", f"{label}, {name} ({tokens} tokens)", _impls(model, model64, keys, kind, batch, calib))
    return rows
