"""The planted-outlier GPT-2 reproduces LLM.int8()'s point: decomposition keeps logits close, pure int8 does not."""
import copy

import pytest
import torch

import eightbit
from eightbit.models import build_gpt2_with_outliers


def _logit_errors(model, ids, threshold):
    with torch.no_grad():
        ref = model(ids).logits
        q = eightbit.quantize_model(copy.deepcopy(model), eightbit.Int8Config(threshold=threshold))
        out = q(ids).logits
    rel = float((out - ref).norm() / ref.norm())
    top1 = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return rel, top1


def test_planted_dims_and_magnitudes(seed):
    model = build_gpt2_with_outliers(n_layer=2, n_embd=64, outlier_dims=(3, 40), seed=seed)
    assert model.outlier_dims == (3, 40) and model.config.eightbit_outlier_dims == [3, 40]
    ln = model.transformer.h[1].ln_2
    assert 20 <= ln.bias[3].abs() <= 60 and 20 <= ln.bias[40].abs() <= 60
    others = [d for d in range(64) if d not in (3, 40)]
    assert ln.bias[others].abs().max() < 1.0


def test_int8_threshold_6_close_threshold_0_degrades(seed, gen):
    model = build_gpt2_with_outliers(seed=seed % 1000)
    ids = torch.randint(0, model.config.vocab_size, (8, 64), generator=gen)
    rel6, top6 = _logit_errors(model, ids, 6.0)
    rel0, top0 = _logit_errors(model, ids, 0.0)
    # Measured on 2026-12-06 over 260 fresh seeds: rel6 <= 0.0505, top6 >= 0.76, rel0 / rel6 >= 1.84. Top-1
    # agreement is not compared between the two: where both are near 1 they differ by a token either way (seed
    # 1064092221: 0.996 both; 765710408: 0.945 with decomposition, 0.947 without), which failed CI by chance.
    assert rel6 < 0.07 and top6 > 0.7, (rel6, top6)
    assert rel0 > 1.5 * rel6, (rel0, rel6, top0, top6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="outlier_dims"):
        build_gpt2_with_outliers(n_embd=64, outlier_dims=(64,))
    with pytest.raises(ValueError, match="magnitude"):
        build_gpt2_with_outliers(magnitude=0)
    with pytest.raises(ValueError, match="divisible"):
        build_gpt2_with_outliers(n_embd=66)
