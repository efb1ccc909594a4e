"""StableEmbedding: Xavier init, LayerNorm output, 32-bit optimizer state through the manager."""
import torch

import eightbit.optim as O
from eightbit.nn import StableEmbedding


def test_stable_embedding(seed):
    emb = StableEmbedding(1000, 64, padding_idx=0)
    bound = (6 / (1000 + 64)) ** 0.5
    assert emb.weight.abs().max() <= bound and emb.weight.std() > bound / 3
    assert torch.equal(emb.weight[0], torch.zeros(64))
    ids = torch.randint(0, 1000, (3, 7))
    out = emb(ids)
    assert out.shape == (3, 7, 64)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)  # layer-normalized
    lin = torch.nn.Linear(64, 128)
    opt = O.Adam8bit(list(emb.parameters()) + list(lin.parameters()), lr=1e-3)
    lin(emb(ids)).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["exp_avg"].dtype == torch.float32  # forced 32-bit
    assert opt.state[lin.weight]["state1"].dtype == torch.uint8
