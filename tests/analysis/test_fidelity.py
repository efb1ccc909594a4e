"""compare_models: a quantized model scored against its float reference (logits and embeddings, masks, bad input)."""
import copy

import pytest
import torch

import eightbit
from eightbit.analysis import Fidelity, compare_models
from eightbit.models import build_gpt2_with_outliers


@pytest.fixture(scope="module")
def gpt2():
    return build_gpt2_with_outliers(n_layer=2, n_embd=128, outlier_dims=(7, 64), seed=3).eval()


def test_logits_identical_model_and_quantized(gpt2):
    """The reference against itself: no error, every top-1 token agrees. LLM.int8() with its outlier threshold
    agrees on nearly every token with a small error; with the threshold off (no decomposition), the planted
    outlier dims cost it clearly more error, which the score must show. Fixed inputs (seed 0: 92.4 % agreement,
    2.3x the error without the threshold): over fresh random tokens the agreement ranges down to 85 %, so these
    floors would fail by chance."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 512, (2, 24), generator=gen) for _ in range(3)]
    same = compare_models(gpt2, gpt2, batches)
    assert isinstance(same, Fidelity) and same.kind == "logits"
    assert same.max_abs_error == 0 and same.rel_error == 0 and same.top1_agreement == 1.0 and same.positions == 144
    with_outliers = compare_models(eightbit.quantize_model(copy.deepcopy(gpt2), eightbit.Int8Config()), gpt2, batches)
    plain = compare_models(eightbit.quantize_model(copy.deepcopy(gpt2), eightbit.Int8Config(threshold=0.0)), gpt2,
                           batches)
    assert with_outliers.top1_agreement >= 0.9 and with_outliers.rel_error < 0.1
    assert plain.rel_error > 2 * with_outliers.rel_error


def test_embeddings_use_the_attention_mask(gen):
    """Hidden-state outputs are scored by the cosine of mask-pooled embeddings: changing only padded positions of
    the quantized model's output changes nothing, changing a real one does."""
    class Shift(torch.nn.Module):
        def __init__(self, where):
            super().__init__()
            self.where = where

        def forward(self, x, attention_mask=None):
            y = x.clone()
            if self.where is not None:
                y[:, self.where] += 5.0
            return y

    ref = Shift(None)
    x = torch.randn(2, 6, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    batches = [{"x": x, "attention_mask": mask}]
    padded_only = compare_models(Shift(5), ref, batches)
    assert padded_only.kind == "embeddings" and padded_only.cosine == pytest.approx(1.0)
    assert padded_only.max_abs_error == 0 and padded_only.positions == 8
    real = compare_models(Shift(1), ref, batches)
    assert real.cosine < 0.999 and real.max_abs_error == pytest.approx(5.0)


def test_bad_input(gpt2, gen):
    ids = torch.randint(0, 512, (1, 8), generator=gen)
    with pytest.raises(ValueError, match="empty"):
        compare_models(gpt2, gpt2, [])
    with pytest.raises(ValueError, match="different outputs"):
        compare_models(gpt2, lambda x: torch.zeros(1, 8, 4), [ids])
    with pytest.raises(TypeError, match="logits or hidden states"):
        compare_models(lambda x: "text", gpt2, [ids])


def test_a_tokenizers_mapping_batch_is_passed_by_keyword(gen):
    """A tokenizer's output is a Mapping but not a dict (transformers' BatchEncoding is a UserDict): compare_models
    and find_outlier_features call the model with its entries as keywords, as calibrate does."""
    from collections import UserDict

    from eightbit.analysis import find_outlier_features

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x, attention_mask=None):
            return self.lin(x)

    ref = Net()
    batch = UserDict({"x": torch.randn(2, 5, 8, generator=gen), "attention_mask": torch.ones(2, 5)})
    fid = compare_models(copy.deepcopy(ref), ref, [batch])
    assert fid.cosine == pytest.approx(1.0)
    report = find_outlier_features(ref, [batch])
    assert report is not None
