"""The packed single-lookup code tables (kernels/cpu/tables.packed_lut) against torch.searchsorted, and the
native kernels that use them against the kernels that do not (the 65536-entry table path)."""
from __future__ import annotations

import pytest
import torch

from eightbit.functional import create_dynamic_map, create_linear_map
from eightbit.functional.codes import codebook
from eightbit.kernels.cpu import native
from eightbit.kernels.cpu.blockwise import quantize_into
from eightbit.kernels.cpu.tables import Lut, _packed_lookup, native_tables, packed_lut


def _mid(code: torch.Tensor) -> torch.Tensor:
    return (code[1:] + code[:-1]) / 2


def _probes(gen: torch.Generator) -> torch.Tensor:
    """Values in [-1, 1]: random, exact codes and midpoints with their float neighbours, signed zeros,
    subnormals, tiny magnitudes below every threshold, and +-1."""
    r = torch.rand(200_000, generator=gen) * 2 - 1
    log = -torch.rand(20_000, generator=gen) * 40  # magnitudes down to 1e-40
    tiny = torch.pow(10.0, log) * torch.sign(torch.randn(20_000, generator=gen))
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-38, -1e-38, 2.0**-126, -(2.0**-126)])
    return torch.cat([r, tiny, special])


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    up = torch.nextafter(v, torch.full_like(v, 2.0))
    down = torch.nextafter(v, torch.full_like(v, -2.0))
    return torch.cat([v, up, down]).clamp(-1, 1)


CODES = {
    "dynamic signed": create_dynamic_map(signed=True),
    "dynamic unsigned": create_dynamic_map(signed=False),
    "linear signed": create_linear_map(signed=True),
}


@pytest.mark.parametrize("name", list(CODES))
def test_packed_tables_equal_searchsorted(name):
    gen = torch.Generator().manual_seed(7)
    code = CODES[name].float()
    mid = _mid(code)
    packed = packed_lut(code, mid)
    assert packed is not None
    near, floor, klo, span = packed
    assert near is not None and floor is not None
    assert near.numel() == 2 * span and near.numel() * 4 <= 64 * 1024  # small enough for L1/L2
    x = torch.cat([_probes(gen), _neighbours(code), _neighbours(mid)])
    torch.testing.assert_close(_packed_lookup(x, near, klo), torch.searchsorted(mid, x, right=False))
    xf = x + 0.0  # the kernel canonicalizes -0.0 before floor lookups
    torch.testing.assert_close(_packed_lookup(xf, floor, klo), torch.searchsorted(code, xf, right=True))


def test_packed_tables_refuse_crowded_cells():
    """Two thresholds in one float cell cannot be packed: that table is None (the kernel falls back)."""
    code = create_dynamic_map(signed=True).float().clone()
    code[200] = torch.nextafter(code[201], torch.tensor(-2.0))  # code 200 and 201 one ulp apart
    packed = packed_lut(code, _mid(code))
    assert packed is not None and packed[1] is None


def test_packed_tables_refuse_codes_outside_unit_range():
    code = torch.linspace(-2, 2, 256)
    assert packed_lut(code, _mid(code)) is None


@pytest.mark.skipif(native.library() is None, reason="native library unavailable")
@pytest.mark.parametrize("seed", [-1, 12345])
def test_native_quantize_packed_equals_unpacked(monkeypatch, seed):
    """The packed-table kernel and the 65536-entry-table kernel give identical codes (nearest and stochastic)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2048, generator=gen) * torch.rand(64, 1, generator=gen) * 10
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0])
    x[1] = 0.0
    x[2, 7] = float("nan")
    def run(code, lut):
        q, a = torch.empty(x.shape, dtype=torch.uint8), torch.empty(x.shape[0])
        assert quantize_into(x, code, x.shape[1], q, a, seed, 0, lut)
        return q, a

    for name, code in CODES.items():
        code = code.float()
        full = native_tables(codebook(code)).lut
        assert full.near and full.floor_  # the packed tables exist for these codes
        unpacked = Lut(full.code, full.table, full.midp, full.k, full.zero_idx, None, None, 0, 0)
        q1, a1 = run(code, full)
        q2, a2 = run(code, unpacked)
        assert torch.equal(q1, q2), name
        torch.testing.assert_close(a1, a2, equal_nan=True)


def test_empty_buffers_are_plain_tensors():
    for shape, dtype in [((3, 5), torch.float32), ((8 << 20,), torch.uint8), ((2 << 20,), torch.float32)]:
        t = native.empty(shape, dtype=dtype)
        assert t.shape == torch.Size(shape) and t.dtype == dtype and t.is_contiguous()
        t.fill_(1)
        assert int(t.sum()) == t.numel()


@pytest.mark.parametrize("signed", [True, False])
def test_binade_classes_reproduce_the_per_binade_tables(signed):
    """The 8-lane encoders read a binade's row as class (byte shuffle) then value (8-entry permute): for both
    binary maps every position's class row equals the per-binade tables, and the struct carries them. More than
    8 distinct rows gives None (those encoders keep the group search)."""
    from eightbit.functional.codes import binary_codebook
    from eightbit.kernels.cpu.tables import binade_classes, binade_params

    cb = binary_codebook(signed)
    tables = binade_params(cb.groups, signed)
    cls, values = binade_classes(tables)
    assert len(cls) == 32 and max(cls) < 8 and all(len(v) == 8 for v in values)
    for pos in range(32):
        assert [v[cls[pos]] for v in values] == [t[pos] for t in tables], pos
    lut = native_tables(cb).lut
    assert lut.bin_ncls == 1 + max(cls) and list(lut.bin_cls) == cls
    assert [list(lut.bin_cnear), list(lut.bin_cnegoff), list(lut.bin_cshift)] == values
    assert binade_classes(([i for i in range(32)],) * 3) is None
