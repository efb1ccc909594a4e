"""Fidelity of a quantized model to its float reference, on the same input batches.

Encoders (outputs with ``last_hidden_state``): sentence embeddings, mean-pooled over the attention mask and
L2-normalised (the sentence-transformers recipe); the score is their mean cosine similarity.
Language models (outputs with ``logits``): max abs and relative (Frobenius) error of the logits and the
fraction of token positions whose top-1 token agrees. Padding positions are excluded everywhere.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Iterable

import torch
from torch import nn


@dataclasses.dataclass
class Fidelity:
    """Quantized vs reference outputs. ``kind`` is ``"embeddings"`` or ``"logits"``; ``cosine``/``min_cosine``
    are set for embeddings, ``top1_agreement`` for logits; errors are over the compared output tensor."""

    kind: str
    max_abs_error: float
    rel_error: float
    cosine: float | None = None
    min_cosine: float | None = None
    top1_agreement: float | None = None
    positions: int = 0


def _main_output(out: Any) -> tuple[str, torch.Tensor]:
    logits = getattr(out, "logits", None) if not isinstance(out, Mapping) else out.get("logits")
    if isinstance(logits, torch.Tensor):
        return "logits", logits
    hidden = getattr(out, "last_hidden_state", None) if not isinstance(out, Mapping) else out.get("last_hidden_state")
    if isinstance(hidden, torch.Tensor):
        return "embeddings", hidden
    if isinstance(out, torch.Tensor):
        return "embeddings", out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return "embeddings", out[0]
    raise TypeError(f"cannot find logits or hidden states in the model output ({type(out).__name__})")


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Iterable[Any]) -> tuple[str, list[torch.Tensor], float]:
    """Run ``model`` on every batch; returns (kind, float32 outputs per batch, seconds spent in forward)."""
    kinds, outs, seconds = set(), [], 0.0
    for batch in batches:
        t0 = time.perf_counter()
        out = _call(model, batch)
        seconds += time.perf_counter() - t0
        kind, tensor = _main_output(out)
        kinds.add(kind)
        outs.append(tensor.detach().float().cpu())
    if len(kinds) != 1:
        raise ValueError("batches is empty" if not kinds else f"model returned mixed outputs {sorted(kinds)}")
    return kinds.pop(), outs, seconds


def _mask_of(batch: Any, tensor: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(tensor.shape[:2]):
        return mask.bool().cpu()
    return torch.ones(tensor.shape[:2], dtype=torch.bool)


def compare_outputs(kind: str, reference: list[torch.Tensor], quantized: list[torch.Tensor], batches: list[Any]) -> Fidelity:
    """Score ``quantized`` against ``reference`` outputs (lists of [B, T, C] tensors, one per batch)."""
    if len(reference) != len(quantized) or len(reference) != len(batches):
        raise ValueError("reference, quantized and batches must have the same length")
    max_abs, err2, ref2, positions = 0.0, 0.0, 0.0, 0
    cosines, agree = [], 0
    for ref, q, batch in zip(reference, quantized, batches):
        if ref.shape != q.shape:
            raise ValueError(f"output shapes differ: reference {tuple(ref.shape)}, quantized {tuple(q.shape)}")
        mask = _mask_of(batch, ref) if ref.dim() == 3 else None
        r, x = (ref[mask], q[mask]) if mask is not None else (ref.reshape(-1, ref.shape[-1]), q.reshape(-1, q.shape[-1]))  # (N, C)
        diff = (x.double() - r.double())
        max_abs = max(max_abs, float(diff.abs().max())) if diff.numel() else max_abs
        err2 += float(diff.pow(2).sum())
        ref2 += float(r.double().pow(2).sum())
        positions += r.shape[0]
        if kind == "logits":
            agree += int((x.argmax(-1) == r.argmax(-1)).sum())
        elif mask is not None:
            m = mask.unsqueeze(-1).float()  # (B, T, 1)
            pooled_r = torch.nn.functional.normalize((ref * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            pooled_q = torch.nn.functional.normalize((q * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            cosines.append((pooled_r * pooled_q).sum(-1))
        else:
            cosines.append(torch.nn.functional.cosine_similarity(r, x, dim=-1))
    rel = (err2 ** 0.5) / max(ref2 ** 0.5, 1e-30)
    if kind == "logits":
        return Fidelity(kind, max_abs, rel, top1_agreement=agree / max(positions, 1), positions=positions)
    cos = torch.cat(cosines)
    return Fidelity(kind, max_abs, rel, cosine=float(cos.mean()), min_cosine=float(cos.min()), positions=positions)


def compare_models(quantized: nn.Module, reference: nn.Module, batches: Iterable[Any]) -> Fidelity:
    """Run both models on ``batches`` (tensors, tuples or dicts of keyword arguments, e.g. a tokenizer's output)
    and score the quantized one against the reference (a :class:`Fidelity`): for logits (``.logits``) the
    top-1 agreement, for hidden states (``.last_hidden_state``, a tensor, or the first of a tuple) the cosine of
    the mean-pooled embeddings over the attention mask (per position without one); both with the max absolute
    and relative (Frobenius) error over unmasked positions. ValueError for no batches or outputs that differ in
    kind or shape; TypeError for outputs holding neither."""
    batches = list(batches)
    kind, ref_out, _ = model_outputs(reference, batches)
    kind_q, q_out, _ = model_outputs(quantized, batches)
    if kind != kind_q:
        raise ValueError(f"the models return different outputs: reference {kind}, quantized {kind_q}")
    return compare_outputs(kind, ref_out, q_out, batches)
