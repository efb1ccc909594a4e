"""find_outlier_features on planted and clean models, batch formats, plot, markdown and bad input."""
import pytest
import torch
from torch import nn

from eightbit.analysis import find_outlier_features
from eightbit.models import build_gpt2_with_outliers


@pytest.fixture(scope="module")
def planted():
    return build_gpt2_with_outliers(n_layer=3, n_embd=128, outlier_dims=(7, 64, 100), seed=1)


def test_finds_exactly_the_planted_dims(planted, gen):
    ids = torch.randint(0, 512, (4, 48), generator=gen)
    # mixed batch formats: positional tensor, tuple, dict with an attention mask
    batches = [ids[:2], (ids[2:3],), {"input_ids": ids[3:], "attention_mask": torch.ones(1, 48, dtype=torch.long)}]
    report = find_outlier_features(planted, batches)
    assert report.emergent_dims() == [7, 64, 100]
    assert report.hidden_size == 128
    stats = {s.dim: s for s in report.dim_stats()}
    assert set(stats) == {7, 64, 100}
    n_hidden = len(report.hidden_layers)  # 3 blocks x (c_attn, attn.c_proj, c_fc) + lm_head
    assert n_hidden == 10
    for s in stats.values():
        assert s.layers_affected == 7 and s.position_frac > 0.9 and s.max_magnitude >= 20
    assert sum(layer.positions for layer in report.layers if layer.name == "lm_head") == 4 * 48


def test_clean_model_has_none(gen):
    model = build_gpt2_with_outliers(n_layer=2, n_embd=64, outlier_dims=(), seed=3)
    report = find_outlier_features(model, [torch.randint(0, 512, (2, 32), generator=gen)])
    assert report.emergent_dims() == [] and report.dim_stats() == []
    assert "emergent dims: none" in report.summary()


def test_criterion_thresholds_and_padding():
    # one linear layer fed by hand: dim 1 is an outlier at 50% of real positions, dim 2 only at padding
    lin = nn.Linear(4, 3)
    x = torch.zeros(1, 4, 4)
    x[0, :2, 1] = 10.0
    x[0, 3, 2] = 99.0
    mask = torch.tensor([[1, 1, 1, 1]])
    model = nn.Sequential(lin)
    rep = find_outlier_features(model, [x])
    assert rep.emergent_dims() == [1, 2]
    assert rep.emergent_dims(min_position_frac=0.6) == []

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, attention_mask):
            return self.lin(x)

    rep = find_outlier_features(Wrap(), [{"x": x, "attention_mask": torch.tensor([[1, 1, 1, 0]])}])
    assert rep.emergent_dims() == [1]  # the padding position is not counted
    assert rep.layers[0].positions == 3
    del mask


def test_nan_is_ignored_and_counted():
    x = torch.zeros(3, 4)
    x[0, 0] = float("nan")
    x[1, 3] = 8.0
    rep = find_outlier_features(nn.Linear(4, 2), [x])
    assert rep.layers[0].nan_count == 1 and rep.emergent_dims() == [3]


def test_markdown_and_plot(planted, tmp_path, gen):
    rep = find_outlier_features(planted, [torch.randint(0, 512, (2, 32), generator=gen)])
    md = rep.to_markdown()
    assert "| 64 |" in md and "yes" in md and "lm_head" in md
    strict = rep.to_markdown(min_layer_frac=1.0)  # the criterion reaches the summary line and the table
    assert "| 64 |" in strict and "yes" not in strict and "emergent dims: none" in strict
    assert "emergent dims: none" in rep.summary(min_layer_frac=1.0)
    with pytest.raises(ValueError, match="min_layer_frac"):
        rep.dim_stats(min_layer_frac=1.5)
    png = rep.plot(tmp_path / "out.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="png"):
        rep.plot(tmp_path / "out.jpg")


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        find_outlier_features("nope", [])
    with pytest.raises(ValueError, match="linear"):
        find_outlier_features(nn.ReLU(), [torch.zeros(2)])
    with pytest.raises(ValueError, match="empty"):
        find_outlier_features(nn.Linear(2, 2), [])
    with pytest.raises(ValueError, match="threshold"):
        find_outlier_features(nn.Linear(2, 2), [torch.zeros(1, 2)], threshold=0)
