"""FP8 vs INT8 post-training quantization on the real MiniLM model (FP8-BERT's claim, reproduced small).

Rows: fp32, INT8 static per-tensor (minmax) (the paper's baseline), INT8 static with per-channel weights
(minmax, entropy), FP8 E4M3, FP8 E5M2, LLM.int8() (when available). Columns: memory footprint, mean cosine of each sentence embedding
to fp32, and nearest-neighbour retrieval agreement with fp32 over the 240 eval sentences (top-1: same
nearest neighbour; top-5: mean overlap of the 5-neighbour sets; the query itself excluded).

Run: ``python examples/compare_int8_fp8.py`` (about a minute on 2 cores). ``compare()`` returns the rows.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch


def _configs() -> list[tuple[str, Any]]:
    import eightbit

    rows: list[tuple[str, Any]] = [
        ("fp32", None),
        ("INT8 static per-tensor (minmax)", eightbit.Int8StaticConfig(calibration="minmax", weight_granularity="tensor")),
        ("INT8 static per-channel (minmax)", eightbit.Int8StaticConfig(calibration="minmax", weight_granularity="channel")),
        ("INT8 static per-channel (entropy)", eightbit.Int8StaticConfig(calibration="entropy", weight_granularity="channel")),
        ("FP8 E4M3", eightbit.FP8Config(format="e4m3")),
        ("FP8 E5M2", eightbit.FP8Config(format="e5m2")),
    ]
    try:
        rows.append(("LLM.int8()", eightbit.Int8Config()))
    except (ImportError, AttributeError):  # LLM.int8() not built in this checkout
        pass
    return rows


def neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of the k most similar other rows of unit-norm ``emb`` (N, C) by cosine."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def retrieval_agreement(ref: torch.Tensor, emb: torch.Tensor, k: int) -> float:
    """Mean over queries of |top-k(ref) & top-k(emb)| / k (top-1: same nearest neighbour)."""
    a, b = neighbours(ref, k), neighbours(emb, k)
    overlap = (a[:, :, None] == b[:, None, :]).any(-1).sum(1).double() / k
    return float(overlap.mean())


def compare(*, batch_size: int = 32, progress: bool = False) -> list[dict[str, Any]]:
    """Run the comparison; one dict per row: name, memory_mb, cosine, top1, top5, seconds."""
    import eightbit
    from eightbit.data.sentences import calibration_sentences, eval_sentences
    from eightbit.models.minilm import embed_sentences, load_minilm

    base, tok = load_minilm()
    evals, calib = eval_sentences(), calibration_sentences()
    ref = embed_sentences(base, tok, evals)
    calib_batches = [
        tok(calib[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        for i in range(0, len(calib), batch_size)
    ]
    rows = []
    for name, config in _configs():
        t0 = time.perf_counter()
        model = base if config is None else eightbit.quantize_model(copy.deepcopy(base), config)
        if config is not None and config.needs_calibration:
            eightbit.calibrate(model, calib_batches, progress=progress)
        emb = embed_sentences(model, tok, evals)
        rows.append({
            "name": name,
            "memory_mb": eightbit.memory_footprint(model) / 2**20,
            "cosine": float((emb * ref).sum(1).mean()),
            "min_cosine": float((emb * ref).sum(1).min()),
            "top1": retrieval_agreement(ref, emb, 1),
            "top5": retrieval_agreement(ref, emb, 5),
            "seconds": time.perf_counter() - t0,
        })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| method | memory (MB) | mean cosine to fp32 | min cosine | top-1 NN agreement | top-5 NN overlap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['memory_mb']:.1f} | {r['cosine']:.4f} | {r['min_cosine']:.4f} | {r['top1']:.3f} | {r['top5']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = compare(progress=True)
    print(markdown_table(rows))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
