"""Load models from local directories for the CLI: float Hugging Face model directories, built-in names, and
quantized directories written by ``eightbit quantize``; turn sentences into input batches.

Built-in names: ``minilm`` (the shipped all-MiniLM-L6-v2) and ``gpt2-outliers`` (``build_gpt2_with_outliers()``).
A quantized directory holds ``save_quantized`` output plus the float model's ``config.json`` (and tokenizer
files when the source had them); ``eightbit_config.json`` gains a ``"source"`` entry::

    "source": {"model": "<MODEL_DIR as given, or a built-in name>", "architecture": "BertModel", "model_type": "bert"}

so that the float skeleton can be rebuilt from the directory alone (``architecture`` is a transformers class;
``AutoModel`` when the config names none).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

BUILTIN_MODELS = ("minilm", "gpt2-outliers")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt")


class ModelDirError(ValueError):
    """A model directory that cannot be used (missing, not a transformers model, unsupported type)."""


def quiet_transformers() -> None:
    """Silence import-time warnings and the weight-loading progress bars of transformers and its plugins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("torchao", "torch.utils._pytree", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is an optional dependency
        pass


def _transformers():
    quiet_transformers()
    try:
        import transformers
    except ImportError as e:  # pragma: no cover
        raise ModelDirError("this command needs transformers: pip install 'eightbit[hf]'") from e
    return transformers


def _model_class(config: Any):
    transformers = _transformers()
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    return (cls if isinstance(cls, type) and issubclass(cls, nn.Module) else transformers.AutoModel), arch


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise ModelDirError(f"{path}: no such directory")
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a directory")
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path}: no config.json, not a Hugging Face model directory")


def _load_config(path: Path):
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: cannot read config.json as a transformers config ({str(e).splitlines()[0]})") from e


def load_tokenizer(*paths: Path | None) -> Any | None:
    """The tokenizer from the first directory holding tokenizer files, or None. Sets a pad token if missing."""
    transformers = _transformers()
    for path in paths:
        if path is None or not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
            continue
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        return tok
    return None


def _check_loaded(path: Path, arch: str, model: nn.Module, loading: dict[str, Any]) -> None:
    """ModelDirError where the checkpoint does not hold the model's weights: transformers leaves the missing ones
    at their random initial values and only logs it, so a quantized directory (or any mismatched checkpoint)
    given as a float model ran on random weights. A few missing weights beside no unexpected ones (say, a pooler
    a checkpoint does not carry) are a warning."""
    missing, unexpected = list(loading.get("missing_keys", [])), list(loading.get("unexpected_keys", []))
    if not missing:
        return
    if (path / "eightbit_config.json").is_file():
        raise ModelDirError(f"{path}: an eightbit quantized directory, not a float model (quantize from its float "
                            "source; load it with eightbit.load_quantized)")
    if unexpected or len(missing) > 0.1 * len(model.state_dict()):
        raise ModelDirError(f"{path}: the checkpoint does not hold the {arch} model's weights ({len(missing)} "
                            f"missing, e.g. {missing[0]!r}; {len(unexpected)} unexpected): it would run on random weights")
    warnings.warn(f"{path}: {len(missing)} weight(s) not in the checkpoint keep their initial values: "
                  f"{', '.join(missing[:3])}", RuntimeWarning, stacklevel=3)


def load_float_model(name_or_dir: str | os.PathLike) -> tuple[nn.Module, Any | None, dict[str, Any]]:
    """(model, tokenizer or None, source info) for a built-in name or a Hugging Face model directory.

    The model is float32 in eval mode, built by the class its config names (``architectures[0]``), else
    ``AutoModel``. Raises ModelDirError (a ValueError) with a one-line reason on any failure."""
    name = str(name_or_dir)
    if name == "minilm":
        from .minilm import load_minilm, minilm_path

        try:
            model, tok = load_minilm()
        except RuntimeError as e:
            raise ModelDirError(str(e)) from e
        return model, tok, {"model": "minilm", "architecture": type(model).__name__, "model_type": model.config.model_type, "dir": str(minilm_path())}
    if name == "gpt2-outliers":
        _transformers()
        from .toy import build_gpt2_with_outliers

        model = build_gpt2_with_outliers()
        return model, None, {"model": "gpt2-outliers", "architecture": type(model).__name__, "model_type": "gpt2", "dir": None}
    path = Path(name_or_dir)
    _check_dir(path)
    config = _load_config(path)
    cls, arch = _model_class(config)
    try:
        model, loading = cls.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ModelDirError(f"{path}: cannot load the {arch or config.model_type} model ({str(e).splitlines()[0]})") from e
    _check_loaded(path, arch or config.model_type, model, loading)
    model.eval()
    info = {"model": str(path.resolve()), "architecture": type(model).__name__, "model_type": config.model_type, "dir": str(path.resolve())}
    return model, load_tokenizer(path), info


def save_source_files(out: Path, model: nn.Module, tokenizer: Any | None, info: dict[str, Any]) -> None:
    """Write the float model's config.json and tokenizer into ``out`` and record ``info`` under ``"source"``
    in ``eightbit_config.json`` (already written by ``save_quantized``)."""
    from ..quantize.serialization import CONFIG_NAME

    model.config.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    meta_file = out / CONFIG_NAME
    meta = json.loads(meta_file.read_text())
    meta["source"] = {k: info[k] for k in ("model", "architecture", "model_type")}
    meta_file.write_text(json.dumps(meta, indent=2))


def load_quantized_dir(path: str | os.PathLike) -> tuple[nn.Module, Any | None, dict[str, Any], int]:
    """(quantized model, tokenizer or None, checkpoint metadata, fp32 bytes of the float skeleton) for a
    directory written by ``eightbit quantize``. Raises ModelDirError on any failure."""
    from ..quantize.convert import memory_footprint
    from ..quantize.serialization import load_quantized, read_checkpoint_meta

    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such directory")
    try:
        meta, _ = read_checkpoint_meta(path)
    except (FileNotFoundError, ValueError) as e:
        raise ModelDirError(str(e)) from e
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path}: no config.json beside the checkpoint; write it with `eightbit quantize`")
    config = _load_config(path)
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    transformers = _transformers()
    cls = getattr(transformers, str(source.get("architecture")), None) if source.get("architecture") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        cls, _ = _model_class(config)
    try:
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ModelDirError(f"{path}: cannot build the {config.model_type} model ({str(e).splitlines()[0]})") from e
    model = model.float().eval()
    fp32_bytes = memory_footprint(model)
    try:
        load_quantized(path, model)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise ModelDirError(f"{path}: {str(e).splitlines()[0]}") from e
    model.eval()
    return model, load_tokenizer(path), meta, fp32_bytes


def read_sentences(file: str | os.PathLike | None, *, default: str = "eval") -> list[str]:
    """Non-empty lines of ``file`` (UTF-8), or the shipped eval/calibration sentences when ``file`` is None."""
    from ..data.sentences import calibration_sentences, eval_sentences

    if file is None:
        return eval_sentences() if default == "eval" else calibration_sentences()
    path = Path(file)
    if not path.is_file():
        raise ModelDirError(f"{path}: no such file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ModelDirError(f"{path}: not a UTF-8 text file") from e
    if not lines:
        raise ModelDirError(f"{path}: no sentences (one sentence per line expected)")
    return lines


def make_batches(
    sentences: Sequence[str], tokenizer: Any | None, model: nn.Module, *, batch_size: int = 32, max_length: int = 128, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Keyword-argument batches for ``model``: the tokenized ``sentences``, or, without a tokenizer, random
    token ids (one sequence of 32 tokens per 8 sentences, from ``seed``) within the model's vocabulary."""
    if tokenizer is not None:
        out = []
        for i in range(0, len(sentences), batch_size):
            enc = tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        return out
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ModelDirError("the model has no tokenizer and no config.vocab_size: cannot build inputs")
    n_seq = max(1, len(sentences) // 8)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_seq, 32), generator=gen)
    return [{"input_ids": ids[i : i + batch_size]} for i in range(0, n_seq, batch_size)]
