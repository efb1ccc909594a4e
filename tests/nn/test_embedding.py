"""StableEmbedding: Xavier init, LayerNorm output, 32-bit optimizer state through the manager; every embedding
module under torch.compile and torch.export."""
import pytest
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


@pytest.mark.parametrize("name", ["StableEmbedding", "Embedding8bit", "Embedding"])
def test_embeddings_compile_fullgraph_and_export(name):
    """Each embedding module compiles with ``fullgraph=True`` (the eager backend: bit-identical; inductor: within
    the ulps its own LayerNorm reduction order costs torch's modules too) and round-trips through ``torch.export``
    with a dynamic number of rows, giving the eager result."""
    import eightbit.nn as N

    torch.manual_seed(0)
    if name == "Embedding8bit":
        m = N.Embedding8bit.from_embedding(torch.nn.Embedding(100, 32))
    else:
        m = getattr(N, name)(100, 32)
    m.eval()
    idx = torch.randint(0, 100, (4, 7))
    with torch.no_grad():
        want = m(idx)
        torch._dynamo.reset()
        assert torch.equal(torch.compile(m, backend="eager", fullgraph=True)(idx), want)
        torch._dynamo.reset()
        got = torch.compile(m, fullgraph=True)(idx)
        # LayerNorm over 32 values: |out| <= sqrt(31) < 8, where an ulp is at most 4 eps; another summation order
        # of the mean and variance moves a result by a few ulps (torch's own Embedding + LayerNorm: 2): allow 8
        torch.testing.assert_close(got, want, rtol=0, atol=8 * 4 * torch.finfo(torch.float32).eps)
        torch._dynamo.reset()
    rows = torch.export.Dim("rows", min=2, max=1024)
    ep = torch.export.export(m, (idx,), dynamic_shapes=({0: rows},))
    for n in (4, 9, 2):
        i = torch.randint(0, 100, (n, 7))
        assert torch.equal(ep.module()(i), m(i)), n


@pytest.mark.parametrize("cast,dtype", [("half", torch.float16), ("bfloat16", torch.bfloat16), ("double", torch.float64)])
def test_embedding8bit_follows_a_float_cast_of_the_model(cast, dtype):
    """``model.half()`` (or any float cast) on a model holding an Embedding8bit makes it emit that dtype, so the
    layers after it run (it used to keep emitting float32, which a half Linear refuses); its int8 rows and
    float32 scales are untouched, and a device move alone keeps the output dtype."""
    import eightbit.nn as N

    torch.manual_seed(0)
    model = torch.nn.Sequential(N.Embedding8bit.from_embedding(torch.nn.Embedding(100, 16)), torch.nn.Linear(16, 4))
    ids = torch.randint(0, 100, (3, 5))
    want = model(ids)
    rows, scales = model[0].weight_int8.clone(), model[0].weight_absmax.clone()
    getattr(model, cast)()
    assert model[0].weight_int8.dtype == torch.int8 and torch.equal(model[0].weight_int8, rows)
    assert model[0].weight_absmax.dtype == torch.float32 and torch.equal(model[0].weight_absmax, scales)
    out = model.to("cpu")(ids)
    assert out.dtype == dtype and model[0](ids).dtype == dtype
    # the rows are dequantized in float32 and rounded once to the new dtype
    assert torch.equal(model[0](ids), (rows[ids].float() * (scales[ids].unsqueeze(-1) / 127.0)).to(dtype))
    # the Linear in the new dtype: bfloat16 keeps 8 significant bits (relative 2^-8 per rounding) over sums of
    # 16 products of values below ~1, so its outputs move by ~1e-2 at most; float16 and float64 far less
    torch.testing.assert_close(out.float(), want, rtol=0.02, atol=0.02)
    model.float()  # and back: float32 again
    assert model[0](ids).dtype == torch.float32 and torch.equal(model[0](ids), model[0](ids).float())
    assert model[0].to("meta")(ids.to("meta")).dtype == torch.float32  # a device move keeps the dtype


@pytest.mark.parametrize("name", ["StableEmbedding", "Embedding"])
def test_32bit_state_survives_deepcopy_and_pickle(name):
    """The 32-bit state override of StableEmbedding / Embedding holds for a deep copy and a pickled-and-loaded
    module too (both skip ``__init__``, where the override is registered), and still for the original."""
    import copy
    import pickle
    import eightbit.nn as enn
    emb = getattr(enn, name)(100, 16)
    copies = [copy.deepcopy(emb), pickle.loads(pickle.dumps(emb))]
    for m in [emb, *copies]:
        lin = torch.nn.Linear(16, 8)
        opt = O.Adam8bit(list(m.parameters()) + list(lin.parameters()), lr=1e-3, min_8bit_size=16)
        lin(m(torch.randint(0, 100, (4, 5)))).sum().backward()
        opt.step()
        assert opt.state[m.weight]["exp_avg"].dtype == torch.float32
        assert opt.state[lin.weight]["state1"].dtype == torch.uint8
