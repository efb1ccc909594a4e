"""``eightbit demo``: the paper's claims on two models, in under a minute on a laptop CPU.

For the built-in MiniLM sentence encoder and a small GPT-2 with planted emergent outlier features, one table
each: memory, forward time and fidelity to fp32 for bf16, LLM.int8() with threshold 6 (mixed-precision
decomposition) and 0 (pure vector-wise int8), FP8 E4M3 and static INT8 post-training quantization; then a few
8-bit AdamW steps against torch AdamW (optimizer state memory); last, a small random fp32 checkpoint loaded
straight into 8-bit in a fresh process, with its peak memory. Methods whose code is not available are
listed as skipped.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .analysis.fidelity import Fidelity, compare_outputs, model_outputs


@dataclasses.dataclass
class DemoRow:
    """One method on one model; ``fidelity`` is None for the fp32 reference, ``skipped`` holds a reason."""

    method: str
    memory_bytes: int = 0
    forward_s: float = 0.0
    fidelity: Fidelity | None = None
    outlier_cols: str = "-"
    skipped: str | None = None


def _variants(threshold_cols: str) -> list[tuple[str, Callable[[], Any] | str, str]]:
    """(label, config factory or "bf16", outlier-column note) for every compared method."""
    import eightbit

    return [
        ("bf16", "bf16", "-"),
        ("LLM.int8() threshold 6", lambda: eightbit.Int8Config(threshold=6.0), threshold_cols),
        ("LLM.int8() threshold 0", lambda: eightbit.Int8Config(threshold=0.0), "0 (off)"),
        ("FP8 E4M3 (static)", lambda: eightbit.FP8Config(format="e4m3"), "-"),
        ("INT8 static (minmax)", lambda: eightbit.Int8StaticConfig(calibration="minmax"), "-"),
    ]


def _apply(model: nn.Module, factory: Callable[[], Any] | str, calib: list) -> nn.Module:
    import eightbit

    if factory == "bf16":
        return model.to(torch.bfloat16)
    return eightbit.quantize_model(model, factory(), calibration_data=calib)


def compare_methods(model: nn.Module, batches: list, calib: list, *, outlier_threshold: float = 6.0) -> tuple[list[DemoRow], Any]:
    """Rows for fp32 and every method on ``model`` (left unchanged; each method works on a deep copy),
    plus the fp32 model's ``OutlierReport``."""
    from .analysis.outliers import find_outlier_features
    from .quantize.convert import memory_footprint

    report = find_outlier_features(model, batches, outlier_threshold)
    hidden = report.layers
    cols = f"{sum(len(layer.outlier_dims()) for layer in hidden) / max(len(hidden), 1):.1f}/layer"
    kind, ref_out, ref_s = model_outputs(model, batches)
    rows = [DemoRow("fp32 (reference)", memory_footprint(model), ref_s)]
    for label, factory, note in _variants(cols):
        try:
            m = _apply(copy.deepcopy(model), factory, calib)
        except (ImportError, AttributeError, NotImplementedError) as e:
            rows.append(DemoRow(label, skipped=f"not available ({type(e).__name__}: {str(e).splitlines()[0][:60]})"))
            continue
        k, out, seconds = model_outputs(m, batches)
        rows.append(DemoRow(label, memory_footprint(m), seconds, compare_outputs(kind, ref_out, out, batches), note))
    return rows, report


def _minilm_inputs(n: int) -> tuple[nn.Module, list, list]:
    from .data.sentences import calibration_sentences, eval_sentences
    from .models.local import make_batches
    from .models.minilm import load_minilm

    model, tok = load_minilm()
    return model, make_batches(eval_sentences()[:n], tok, model), make_batches(calibration_sentences()[:32], tok, model)


def _gpt2_inputs(n: int) -> tuple[nn.Module, list, list]:
    from .models.toy import build_gpt2_with_outliers

    model = build_gpt2_with_outliers()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (max(1, n // 8), 64), generator=torch.Generator().manual_seed(1))
    calib = torch.randint(0, vocab, (8, 64), generator=torch.Generator().manual_seed(2))
    return model, [{"input_ids": ids}], [{"input_ids": calib}]


def optimizer_comparison(steps: int = 5, *, seed: int = 0) -> dict[str, Any] | None:
    """A few AdamW steps on the small GPT-2 with torch AdamW and eightbit AdamW8bit (same init and data):
    optimizer state bytes and final loss of each. None when ``eightbit.optim.AdamW8bit`` is unavailable."""
    try:
        from .optim import AdamW8bit
    except (ImportError, AttributeError):
        return None
    from .models.toy import build_gpt2_with_outliers

    ids = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(seed + 3))
    out: dict[str, Any] = {"steps": steps}
    for name, cls in (("torch AdamW", torch.optim.AdamW), ("eightbit AdamW8bit", AdamW8bit)):
        model = build_gpt2_with_outliers(outlier_dims=(), seed=seed).train()
        opt = cls(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            final = float(model(input_ids=ids, labels=ids).loss)
        state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in _tensors(s))
        out[name] = {"state_bytes": state, "loss": final, "seconds": seconds}
    return out


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _tensors(v)


def _table(title: str, kind: str, rows: list[DemoRow]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("method")
    table.add_column("memory", justify="right")
    table.add_column("vs fp32", justify="right")
    table.add_column("forward", justify="right")
    if kind == "embeddings":
        table.add_column("mean cosine", justify="right")
        table.add_column("min cosine", justify="right")
    else:
        table.add_column("max abs err", justify="right")
        table.add_column("rel err", justify="right")
        table.add_column("top-1 agree", justify="right")
    table.add_column("outlier cols", justify="right")
    fp32 = rows[0].memory_bytes
    n_fid = 2 if kind == "embeddings" else 3
    for r in rows:
        if r.skipped:
            table.add_row(r.method, r.skipped, *[""] * (3 + n_fid))
            continue
        mem = [f"{r.memory_bytes / 2**20:.1f} MiB", f"{r.memory_bytes / fp32:.2f}x", f"{1000 * r.forward_s:.0f} ms"]
        f = r.fidelity
        if f is None:
            fid = ["1 (ref)", "1 (ref)"] if kind == "embeddings" else ["0 (ref)", "0 (ref)", "100% (ref)"]
        elif kind == "embeddings":
            fid = [f"{f.cosine:.5f}", f"{f.min_cosine:.5f}"]
        else:
            fid = [f"{f.max_abs_error:.3f}", f"{100 * f.rel_error:.2f}%", f"{100 * f.top1_agreement:.1f}%"]
        table.add_row(r.method, *mem, *fid, r.outlier_cols)
    return table


STREAM_GB = 0.05


def streaming_comparison(size_gb: float = STREAM_GB) -> dict[str, Any]:
    """Write a random LLaMA-style fp32 checkpoint of ``size_gb`` GB to a temporary directory and load it
    straight into LLM.int8() in a fresh process (``eightbit.quantize.streaming_demo.run_streaming_demo``);
    its dict has ``summary``: "loaded N GB of fp32 weights with a peak of M GB (...)"."""
    import eightbit
    from .quantize.streaming_demo import run_streaming_demo

    return run_streaming_demo(size_gb, eightbit.Int8Config(), forward=False)


def run_demo(models: Sequence[str] = ("minilm", "gpt2"), *, console: Any = None, n_sentences: int = 32,
             optimizer_steps: int = 5, stream: bool = True) -> dict[str, Any]:
    """Run the demo, print rich tables to ``console`` (a ``rich.console.Console``; a new one by default) and
    return the results: {model: (rows, outlier report)}, {"optimizer": ...} and, with ``stream``,
    {"streaming": ...} (``streaming_comparison``). ValueError for more MiniLM sentences than the built-in eval
    set holds (240)."""
    from rich.console import Console

    from .data.sentences import eval_sentences
    from .models.local import quiet_transformers

    available = len(eval_sentences())
    if "minilm" in models and n_sentences > available:  # the title would claim sentences that were never run
        raise ValueError(f"n_sentences (--sentences) must be at most {available} for MiniLM (the built-in eval "
                         f"sentences), got {n_sentences}")

    quiet_transformers()
    console = console or Console()
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    for name in models:
        if name == "minilm":
            with console.status("MiniLM: loading and quantizing"):
                model, batches, calib = _minilm_inputs(n_sentences)
                rows, report = compare_methods(model, batches, calib)
            n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
            title = (f"all-MiniLM-L6-v2 (BertModel, 22.7M params): {n_sentences} eval sentences, {n_tok} tokens; "
                     f"fidelity = cosine of sentence embeddings to fp32")
            console.print(_table(title, "embeddings", rows))
        elif name == "gpt2":
            with console.status("GPT-2 with planted outliers: building and quantizing"):
                model, batches, calib = _gpt2_inputs(n_sentences)
                rows, report = compare_methods(model, batches, calib)
            shape = tuple(batches[0]["input_ids"].shape)
            title = (f"GPT-2 (4 layers, 256 wide, random weights) with outlier dims {list(model.outlier_dims)}: "
                     f"{shape[0]}x{shape[1]} tokens; fidelity = logits vs fp32")
            console.print(_table(title, "logits", rows))
        else:
            raise ValueError(f"models must name minilm or gpt2, got {name!r}")
        console.print(f"  outlier analysis of the fp32 model: {report.summary()}", highlight=False)
        results[name] = (rows, report)
    with console.status("8-bit AdamW vs torch AdamW"):
        opt = optimizer_comparison(optimizer_steps)
    results["optimizer"] = opt
    if opt is None:
        console.print("8-bit optimizer: skipped (eightbit.optim.AdamW8bit not available)")
    else:
        a, b = opt["torch AdamW"], opt["eightbit AdamW8bit"]
        console.print(f"AdamW8bit on the small GPT-2, {opt['steps']} steps: optimizer state {b['state_bytes'] / 2**20:.2f} MiB vs "
                      f"torch AdamW {a['state_bytes'] / 2**20:.2f} MiB ({b['state_bytes'] / max(a['state_bytes'], 1):.2f}x); "
                      f"loss {b['loss']:.4f} vs {a['loss']:.4f}", highlight=False)
    if stream:
        with console.status(f"streaming load of a {STREAM_GB:g} GB fp32 checkpoint into LLM.int8() (fresh process)"):
            results["streaming"] = streaming_comparison()
        console.print(f"Streaming load into LLM.int8(): {results['streaming']['summary']}", highlight=False, soft_wrap=True)
    console.print(f"demo finished in {time.perf_counter() - t_start:.1f} s", highlight=False)
    return results
