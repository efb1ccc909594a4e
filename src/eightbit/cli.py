"""The ``eightbit`` command line (also ``python -m eightbit``): demo, stream-demo, quantize, inspect, eval, outliers,
bench, env.

Every command has ``--help``. Errors a user can cause (a bad path, a directory that is not a model, a model
type transformers cannot build, bad data files) print one ``error: ...`` line on stderr and exit with 1;
bad options exit with 2 (typer's usage errors); Ctrl-C exits with 130.
"""
from __future__ import annotations

import enum
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="eightbit",
    help="8-bit transformers: LLM.int8() inference, FP8/INT8 post-training quantization, 8-bit optimizers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Piped output (tests, `| less`, docs) gets a wide console so that layer names are not cut.
console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 160)))
err_console = Console(stderr=True)


class Method(str, enum.Enum):
    llm_int8 = "llm_int8"
    fp8_e4m3 = "fp8-e4m3"
    fp8_e5m2 = "fp8-e5m2"
    int8_static = "int8-static"


class CLIError(Exception):
    """An error reported as one line without a traceback."""


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one ``error:`` line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .models.local import ModelDirError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130)
        except (CLIError, ModelDirError, OSError, ValueError, TypeError, ImportError) as e:
            # OSError covers every file-system failure (read-only --out, full disk, missing parent...)
            text = str(e).strip()
            if isinstance(e, OSError) and e.filename is not None and e.strerror:
                text = f"{e.filename}: {e.strerror}"
            msg = text.splitlines()[0] if text else type(e).__name__
            err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


def _mib(n: int | float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _progress(items: list, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False, disable=None)


def make_config(method: Method, *, threshold: float = 6.0, calibration: str = "minmax") -> Any:
    """The QuantConfig for a CLI method name."""
    import eightbit

    if method is Method.llm_int8:
        return eightbit.Int8Config(threshold=threshold)
    if method in (Method.fp8_e4m3, Method.fp8_e5m2):
        return eightbit.FP8Config(format=method.value.split("-")[1])
    return eightbit.Int8StaticConfig(calibration=calibration)


def calibrate_model(model: Any, batches: list) -> None:
    """Run ``eightbit.calibrate`` over ``batches`` (it shows its own progress bar)."""
    import eightbit

    eightbit.calibrate(model, batches, progress=True)


@app.command()
@_errors
def demo(
    model: str = typer.Option("all", "--model", "-m", help="Which model to run: minilm, gpt2 or all."),
    sentences: int = typer.Option(32, help="Number of built-in eval sentences (MiniLM) / 8x token sequences (GPT-2)."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="End with a streaming load of a small random fp32 checkpoint into LLM.int8() (about 10 s; see `eightbit stream-demo`)."),
) -> None:
    """Quantize the built-in MiniLM and a small GPT-2 with planted outlier features; print memory, speed and
    fidelity to fp32 for bf16, LLM.int8() (threshold 6 and 0), FP8 E4M3 and static INT8, plus 8-bit AdamW;
    then load a small fp32 checkpoint straight into 8-bit and print its peak memory."""
    from .demo import run_demo

    if model not in ("minilm", "gpt2", "all"):
        raise CLIError(f"--model must be minilm, gpt2 or all, got {model!r}")
    if sentences < 8:
        raise CLIError(f"--sentences must be >= 8, got {sentences}")
    run_demo(("minilm", "gpt2") if model == "all" else (model,), console=console, n_sentences=sentences, stream=stream)


def _stream_lines(r: dict[str, Any], method: str) -> list[str]:
    """The headline of a streaming-load measurement, then one line of detail."""
    peak, bound = r["peak_growth_bytes"], r["limit_bytes"]
    verdict = "peak not measured (needs Linux /proc)" if peak is None else (
        f"peak {'within' if peak <= bound else 'ABOVE'} the bound (final footprint + largest tensor + 64 MB)")
    forward = "" if r["forward_growth_bytes"] is None else (
        f"; 8-token forward pass: peak +{r['forward_growth_bytes'] / 1e6:.1f} MB "
        f"(largest fp32 weight matrix {r['largest_linear_fp32_bytes'] / 1e6:.1f} MB)")
    return [r["summary"], f"  {method}, LLaMA-style {r['layers']} layers x hidden {r['hidden']}: {r['quantized_layers']} "
                          f"linear layers quantized in {r['seconds']:.1f} s in a fresh process; {verdict}{forward}"]


@app.command(name="stream-demo")
@_errors
def stream_demo(
    size_gb: float = typer.Option(0.3, "--size-gb", help="Size of the generated fp32 checkpoint in GB (1e9 bytes)."),
    dir: Optional[Path] = typer.Option(None, "--dir", help="Write the checkpoint here and keep it (an empty or new directory; default: a temporary one, removed)."),
    method: Method = typer.Option(Method.llm_int8, "--method", help="Quantization method."),
) -> None:
    """Write a random LLaMA-style fp32 checkpoint, load it straight into 8-bit tensor by tensor
    (eightbit.load_quantized_from_float) in a fresh process and print the peak memory growth of that load."""
    from .quantize.streaming_demo import run_streaming_demo

    if not 0 < size_gb <= 64:
        raise CLIError(f"--size-gb must be in (0, 64], got {size_gb}")
    if dir is not None and dir.exists() and (not dir.is_dir() or any(dir.iterdir())):
        raise CLIError(f"--dir {dir}: exists and is not an empty directory")
    config = make_config(method)
    where = dir if dir is not None else "a temporary directory"
    with console.status(f"writing a {size_gb:g} GB random fp32 checkpoint to {where}, then loading it into 8-bit in a fresh process"):
        result = run_streaming_demo(size_gb, config, dir)
    for line in _stream_lines(result, method.value):
        console.print(line, highlight=False, soft_wrap=True)
    if dir is not None:
        console.print(f"  checkpoint kept in {dir}", highlight=False)


@app.command()
@_errors
def quantize(
    model_dir: str = typer.Argument(..., help="Hugging Face model directory (config.json + weights), or a built-in: minilm, gpt2-outliers."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (created)."),
    method: Method = typer.Option(Method.llm_int8, "--method", help="Quantization method."),
    threshold: float = typer.Option(6.0, help="LLM.int8() outlier threshold (0 = pure vector-wise int8)."),
    calibration_data: Optional[Path] = typer.Option(None, "--calibration-data", help="Text file, one sentence per line (default: the built-in calibration sentences)."),
    calibration: str = typer.Option("minmax", help="int8-static calibrator: minmax, percentile, entropy or mse."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it already holds files."),
) -> None:
    """Quantize a model and write it to OUT: model.safetensors + eightbit_config.json (with the source
    model recorded) + the float model's config.json and tokenizer files. Everything is written to a temporary
    directory beside OUT and renamed into place when complete: an interrupted run leaves no partial OUT, and
    no file of an earlier model survives in it."""
    from .models.local import load_float_model, make_batches, read_sentences, save_source_files
    from .quantize.convert import memory_footprint, quantize_model
    from .quantize.serialization import save_quantized

    if threshold < 0:
        raise CLIError(f"--threshold must be >= 0, got {threshold}")
    config = make_config(method, threshold=threshold, calibration=calibration)
    sentences = read_sentences(calibration_data, default="calibration") if config.needs_calibration else None
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"{out}: directory is not empty (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise CLIError(f"{out.parent}: no such directory")
    with console.status(f"loading {model_dir}"):
        model, tokenizer, info = load_float_model(model_dir)
    fp32 = memory_footprint(model)
    quantize_model(model, config)
    if config.needs_calibration:
        calibrate_model(model, make_batches(sentences, tokenizer, model))
    _write_atomically(out, lambda tmp: (save_quantized(model, tmp), save_source_files(tmp, model, tokenizer, info)))
    stored = memory_footprint(model)
    console.print(f"{info['architecture']} ({info['model']}) -> {out}: {method.value}, "
                  f"{sum(map(_is_quantized, model.modules()))} layers quantized, "
                  f"{_mib(stored)} (fp32 {_mib(fp32)}, {stored / fp32:.2f}x)", highlight=False)


def _write_atomically(out: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(tmp)`` into a fresh directory beside ``out``, then rename it to ``out`` (replacing what was
    there only after the new one is complete). On any failure or interrupt the temporary directory is removed
    and ``out`` is as it was."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = None
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():  # put the earlier output back
            os.replace(old / "previous", out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _is_quantized(module: Any) -> bool:
    from .nn.base import QuantizedLinear

    return isinstance(module, QuantizedLinear)


def _layer_format(module: Any) -> str:
    tensors = list(module.state_dict().values())
    big = max(tensors, key=lambda t: t.numel()) if tensors else None
    return str(big.dtype).removeprefix("torch.") if big is not None else "-"


@app.command()
@_errors
def inspect(dir: Path = typer.Argument(..., help="Directory written by `eightbit quantize`.")) -> None:
    """Per-layer table of a quantized directory (name, type, shape, format, bytes) and totals vs fp32/bf16."""
    from .models.local import load_quantized_dir
    from .quantize.convert import memory_footprint

    with console.status(f"loading {dir}"):
        model, _, meta, fp32 = load_quantized_dir(dir)
    source = meta.get("source", {})
    cfg = ", ".join(f"{k}={v}" for k, v in meta["config"].items() if k != "method" and v not in ((), [], None))
    table = Table(title=f"{dir}: {source.get('architecture', '?')} from {source.get('model', '?')}, "
                        f"method {meta['config']['method']} ({cfg})", title_justify="left")
    for col, just in (("layer", "left"), ("type", "left"), ("shape (out x in)", "right"), ("format", "left"), ("bytes", "right")):
        table.add_column(col, justify=just)
    quantized_bytes = 0
    for name, m in model.named_modules():
        if _is_quantized(m):
            n = m.storage_bytes()
            quantized_bytes += n
            table.add_row(name, type(m).__name__, f"{m.out_features} x {m.in_features}", _layer_format(m), f"{n:,}")
    total = memory_footprint(model)
    table.add_section()
    table.add_row("quantized layers", "", "", "", f"{quantized_bytes:,}")
    table.add_row("other tensors (embeddings, norms, ...)", "", "", "float32", f"{total - quantized_bytes:,}")
    table.add_row("total", "", "", "", f"{total:,}")
    console.print(table)
    console.print(f"total {_mib(total)} vs fp32 {_mib(fp32)} ({total / fp32:.2f}x) and bf16 {_mib(fp32 / 2)} "
                  f"({2 * total / fp32:.2f}x); file {_mib(meta['weights_bytes'])}", highlight=False)


@app.command(name="eval")
@_errors
def eval_(
    dir: Path = typer.Argument(..., help="Directory written by `eightbit quantize`."),
    reference: Optional[str] = typer.Option(None, "--reference", "-r", help="Float model directory or built-in name (default: the source recorded in DIR)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Text file, one sentence per line (default: the 240 built-in eval sentences)."),
    batch_size: int = typer.Option(32, help="Sentences per forward pass."),
) -> None:
    """Fidelity of a quantized directory to its float model: mean cosine of sentence embeddings (encoders) or
    logits error and top-1 agreement (language models)."""
    from .analysis.fidelity import compare_outputs, model_outputs
    from .models.local import load_float_model, load_quantized_dir, make_batches, read_sentences

    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    sentences = read_sentences(data)
    with console.status(f"loading {dir}"):
        qmodel, qtok, meta, _ = load_quantized_dir(dir)
    ref_name = reference or meta.get("source", {}).get("model")
    if not ref_name:
        raise CLIError(f"{dir} records no source model: pass --reference MODEL_DIR")
    with console.status(f"loading {ref_name}"):
        ref, ref_tok, _ = load_float_model(ref_name)
    tok = qtok or ref_tok
    batches = make_batches(sentences, tok, ref, batch_size=batch_size)
    if tok is None:
        err_console.print(f"note: no tokenizer in {dir} or {ref_name}: using {sum(b['input_ids'].shape[0] for b in batches)} random token sequences")
    kind, ref_out, ref_s = model_outputs(ref, _progress(batches, "reference"))
    kind_q, q_out, q_s = model_outputs(qmodel, _progress(batches, "quantized"))
    if kind != kind_q:
        raise CLIError(f"{dir} and {ref_name} return different outputs ({kind_q} vs {kind}): wrong --reference?")
    fid = compare_outputs(kind, ref_out, q_out, batches)
    table = Table(title=f"{dir} vs {ref_name} ({len(sentences)} sentences, {fid.positions} token positions)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if fid.cosine is not None:
        table.add_row("mean cosine of sentence embeddings", f"{fid.cosine:.5f}")
        table.add_row("min cosine", f"{fid.min_cosine:.5f}")
    if fid.top1_agreement is not None:
        table.add_row("top-1 token agreement", f"{100 * fid.top1_agreement:.2f}%")
    table.add_row(f"max abs error ({kind})", f"{fid.max_abs_error:.4g}")
    table.add_row(f"relative error ({kind})", f"{fid.rel_error:.4g}")
    table.add_row("forward time quantized / float", f"{q_s:.2f} s / {ref_s:.2f} s")
    console.print(table)


@app.command()
@_errors
def outliers(
    model_dir: str = typer.Argument(..., help="Hugging Face model directory, or a built-in: minilm, gpt2-outliers."),
    data: Optional[Path] = typer.Option(None, "--data", help="Text file, one sentence per line (default: the built-in eval sentences)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of per-layer outlier counts and magnitudes."),
    threshold: float = typer.Option(6.0, help="Magnitude that makes a value an outlier."),
    min_layer_frac: float = typer.Option(0.25, help="Emergent: fraction of hidden-width layers affected."),
    min_position_frac: float = typer.Option(0.06, help="Emergent: fraction of token positions affected in a layer."),
    rows: int = typer.Option(20, help="Rows of the per-dimension table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the report as Markdown instead of a table."),
) -> None:
    """Emergent outlier features (LLM.int8() criterion) per hidden dimension, from the inputs of every linear layer."""
    from .analysis.outliers import find_outlier_features
    from .models.local import load_float_model, make_batches, read_sentences

    if threshold <= 0:
        raise CLIError(f"--threshold must be > 0, got {threshold}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise CLIError(f"--plot must name a .png file, got {plot}")
    sentences = read_sentences(data)
    with console.status(f"loading {model_dir}"):
        model, tok, _ = load_float_model(model_dir)
    batches = make_batches(sentences, tok, model)
    report = find_outlier_features(model, batches, threshold, progress=True)
    crit = {"min_layer_frac": min_layer_frac, "min_position_frac": min_position_frac}
    emergent = report.emergent_dims(**crit)
    if markdown:
        console.print(report.to_markdown(max_rows=rows, **crit), markup=False, highlight=False)
    else:
        n_hidden = len(report.hidden_layers)
        table = Table(title=f"{model_dir}: outlier features (|x| >= {threshold:g}) in the inputs of {n_hidden} "
                            f"hidden-width linear layers", title_justify="left")
        for col in ("dim", "max |x|", "layers affected", "layers %", "positions %", "emergent"):
            table.add_column(col, justify="right")
        stats = report.dim_stats(**crit)
        for s in stats[:rows]:
            table.add_row(str(s.dim), f"{s.max_magnitude:.1f}", f"{s.layers_affected}/{n_hidden}", f"{100 * s.layer_frac:.0f}",
                          f"{100 * s.position_frac:.1f}", "yes" if s.emergent else "no")
        if len(stats) > rows:
            table.add_row(f"... {len(stats) - rows} more", "", "", "", "", "")
        console.print(table)
        console.print(report.summary(**crit), highlight=False)
    console.print(f"emergent dims: {' '.join(map(str, emergent)) if emergent else 'none'}", highlight=False)
    if plot is not None:
        report.plot(plot)
        console.print(f"plot written to {plot}", highlight=False)


@app.command()
@_errors
def env(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """What eightbit runs on: versions, CPU features, native/C++ kernels (or why not), CUDA, kernels per op."""
    import json

    from .env import collect_env

    r = collect_env()
    if as_json:
        print(json.dumps(r, indent=1))
        return

    def line(key: str, value: str) -> None:
        console.print(f"{key:<22}{value}", highlight=False, markup=False)

    line("eightbit", f"{r['eightbit']['version']} ({r['eightbit']['path']})")
    line("python", f"{r['python']} on {r['platform']}")
    line("packages", ", ".join(f"{k} {v}" for k, v in r["packages"].items() if v) or "-")
    missing = [k for k, v in r["packages"].items() if not v]
    if missing:
        line("not installed", ", ".join(missing))
    cpu = r["cpu"]
    line("cpu", f"{cpu['model']} ({cpu['machine']}), torch threads {cpu['threads']}")
    if cpu["features"] is not None:
        line("cpu features", " ".join(f if on else f"-{f}" for f, on in cpu["features"].items()))
    nat, cpp = r["native"], r["cpp_ops"]
    line("native C kernels", ("loaded: " if nat["loaded"] else "NOT loaded: ") + str(nat["detail"])
         + f" (isa {nat['isa']}, cache {nat['cache_dir']})")
    if nat["loaded"]:
        line("native code paths", ", ".join(nat["paths"]) or "plain C (no vector paths)")
        if any(p.startswith("amx") for p in nat["paths"]):
            line("AMX tiles", "in use" if nat["amx"] else "not in use (the OS did not grant the tile state, or EIGHTBIT_AMX=0)")
    line("C++ op kernels", ("loaded: " if cpp["loaded"] else "not loaded: ") + str(cpp["detail"]))
    cuda = r["cuda"]
    gpus = "; ".join(f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)" for d in cuda["devices"])
    build = f"torch built for CUDA {cuda['torch_cuda']}" if cuda["torch_cuda"] else "a CPU build of torch"
    line("cuda", (gpus if cuda["available"] else "not available") + f" ({build}, triton "
         f"{'installed' if cuda['triton'] else 'not installed'})")
    if r["settings"]:
        line("settings", " ".join(f"{k}={v}" for k, v in r["settings"].items()))
    if r["reference_forced"]:
        line("references forced", "yes: every op runs its plain-PyTorch reference (EIGHTBIT_REFERENCE=1)")
    console.print("kernels per op (reference only: the plain-PyTorch reference serves every device)", highlight=False)
    table = Table()
    table.add_column("op")
    table.add_column("kernels on")
    for op, devices in r["kernels"].items():
        table.add_row(op, ", ".join(devices) if devices else "reference only")
    console.print(table)


def _bench_root() -> Path | None:
    candidates = [Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "benchmarks" / "__main__.py").is_file():
            return root
    return None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_errors
def bench(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="Small sizes, a few repeats (about a minute)."),
) -> None:
    """Run the benchmark harness (`python -m benchmarks` from the repository root); extra options pass through."""
    root = _bench_root()
    if root is None:
        raise CLIError("benchmark harness not found: run from the eightbit repository root (needs benchmarks/__main__.py)")
    cmd = [sys.executable, "-m", "benchmarks", *(["--quick"] if quick else []), *ctx.args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    rc = subprocess.call(cmd, cwd=str(root), env=env)
    if rc:
        raise typer.Exit(rc)


def main() -> None:
    """Console-script entry point (``eightbit``)."""
    from .models.local import quiet_transformers

    quiet_transformers()
    app()


if __name__ == "__main__":
    main()
