"""A small, config-built GPT-2 with planted emergent-style outlier features (nothing is downloaded).

LLM.int8() (Dettmers et al., 2022) observes that from ~6.7B parameters on, a handful of hidden dimensions
carry huge values (magnitude 20..60 and more) in the inputs of nearly all linear layers, at most token
positions. Per-token (vector-wise) int8 quantization of such an input spends its whole range on the
outlier, so the ordinary dimensions of that token are rounded to a few levels: accuracy collapses unless
the outlier columns are split off into 16-bit (mixed-precision decomposition).

Trained models that small do not have these features, so this module plants them: in every block the
LayerNorms that feed the attention (``ln_1``) and MLP (``ln_2``) inputs, and the final ``ln_f`` feeding
``lm_head``, get a large bias (and a widened gain) in the chosen dimensions. The weight rows that read
those dimensions are scaled by 1/sqrt(m), so the outliers do not simply drown the other features: the
ordinary dimensions still carry much of the signal, which is what pure vector-wise int8 destroys. (Scaling
them by 1/m would make them smaller than one int8 step of their weight row, and LLM.int8() as in
bitsandbytes takes the outlier columns' weights from the int8 weight.)
"""
from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_NUM_OUTLIER_DIMS = 4


def _pick_dims(n_embd: int, outlier_dims: Sequence[int] | None, gen: torch.Generator) -> tuple[int, ...]:
    if outlier_dims is None:
        count = min(DEFAULT_NUM_OUTLIER_DIMS, n_embd)
        return tuple(sorted(torch.randperm(n_embd, generator=gen)[:count].tolist()))
    if isinstance(outlier_dims, (str, bytes)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in outlier_dims):
        raise TypeError(f"outlier_dims must be a sequence of int, got {outlier_dims!r}")
    dims = tuple(sorted(set(outlier_dims)))
    if len(dims) != len(tuple(outlier_dims)):
        raise ValueError(f"outlier_dims must not repeat a dimension, got {tuple(outlier_dims)}")
    if any(d < 0 or d >= n_embd for d in dims):
        raise ValueError(f"outlier_dims must lie in [0, n_embd={n_embd}), got {dims}")
    return dims


def _magnitude_range(magnitude: float | tuple[float, float]) -> tuple[float, float]:
    lo, hi = (magnitude, magnitude) if isinstance(magnitude, (int, float)) else tuple(magnitude)
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
            raise ValueError(f"magnitude must be a positive number or a (low, high) pair, got {magnitude!r}")
    if lo > hi:
        raise ValueError(f"magnitude range must have low <= high, got {magnitude!r}")
    return float(lo), float(hi)


@torch.no_grad()
def _plant(norm: torch.nn.LayerNorm, consumers: list[torch.Tensor], dims: tuple[int, ...], lo: float, hi: float,
           signs: torch.Tensor, gen: torch.Generator) -> None:
    """Give ``norm`` outputs of about ``sign * m`` (m in [lo, hi]) in ``dims``; shrink the weight rows
    (input features) of the ``consumers`` that read them by 1/sqrt(m). ``consumers`` are [in, out] views."""
    mags = lo + (hi - lo) * torch.rand(len(dims), generator=gen)
    for i, d in enumerate(dims):
        m = float(mags[i])
        norm.bias[d] = float(signs[i]) * m
        norm.weight[d] = m / 8  # spread around the bias, |x| stays >= 6 at (nearly) every position
        for w in consumers:
            w[d].mul_(m ** -0.5)


def build_gpt2_with_outliers(
    n_layer: int = 4,
    n_embd: int = 256,
    outlier_dims: Sequence[int] | None = None,
    magnitude: float | tuple[float, float] = (20.0, 60.0),
    seed: int = 0,
    *,
    n_head: int = 4,
    vocab_size: int = 512,
    n_positions: int = 128,
):
    """A ``transformers.GPT2LMHeadModel`` (eval mode, float32, random weights from ``seed``) whose linear-layer
    inputs carry emergent-style outlier features in the hidden dimensions ``outlier_dims``.

    ``outlier_dims``: planted dimensions (default: 4 dimensions drawn from ``seed``); ``magnitude``: the size
    of the outliers, one number or a (low, high) range drawn per layer and dimension (default 20..60).
    ``magnitude=0`` is not allowed; pass ``outlier_dims=()`` for a model without outliers.
    The planted dimensions are returned as ``model.outlier_dims`` (a tuple) and stored in
    ``model.config.eightbit_outlier_dims`` (so they survive ``save_pretrained``).

    Affected inputs: ``attn.c_attn`` and ``mlp.c_fc`` of every block and ``lm_head``
    (9 of the 13 linear layers of hidden width for the default 4 layers). Raises ValueError on bad sizes.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    for name, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head), ("vocab_size", vocab_size), ("n_positions", n_positions)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    gen = torch.Generator().manual_seed(seed)
    dims = _pick_dims(n_embd, outlier_dims, gen)
    lo, hi = _magnitude_range(magnitude)

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.05,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eightbit_outlier_dims=list(dims),
    )
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    signs = torch.where(torch.rand(len(dims), generator=gen) < 0.5, -1.0, 1.0)  # same sign across layers, as in the paper
    if dims:
        for block in model.transformer.h:
            _plant(block.ln_1, [block.attn.c_attn.weight], dims, lo, hi, signs, gen)  # Conv1D weight is [in, out]
            _plant(block.ln_2, [block.mlp.c_fc.weight], dims, lo, hi, signs, gen)
        # lm_head shares its weight with the token embedding ([vocab, in]); scale its columns, i.e. rows of the view.
        _plant(model.transformer.ln_f, [model.lm_head.weight.t()], dims, lo, hi, signs, gen)
    model.outlier_dims = dims
    return model
