"""eightbit optimizers and int8 models under torch.distributed: DDP, ZeRO-1, FSDP2, DCP checkpoints, LoRA.

One 2-rank gloo group on localhost (CPU) is started once per module by ``dist_run`` (subprocesses of
``tests/integrations/_dist_worker.py``, MASTER_ADDR=127.0.0.1, a free port, hard timeout); it runs every
scenario and writes results + final parameters; the tests below judge them against single-process runs.

Tolerances (why): DDP averages gradients with an all-reduce, so a distributed run differs from the
single-process run on the same global batch only by the summation order of the gradient (float ulps).
An 8-bit state can turn such an ulp into one code step of a block (a value on a rounding midpoint), so
results are not bit-identical; we require the L2 distance of all parameters to be below 10% of the
distance between the single-process 8-bit and 32-bit runs (the 8-bit rounding a user already accepts);
observed <= 1.8% over 10 seeds x 3 optimizers. FSDP2 quantizes each local shard block-wise, so block
boundaries move (fc2/fc3 shards do not start on a block boundary): the sharded run is a *different*
8-bit rounding of the same 32-bit trajectory. Against the unsharded run the bound is the triangle
inequality, ||fsdp - unsharded|| <= ||fsdp - fp32|| + ||unsharded - fp32|| ~ 2 x (8-bit vs 32-bit);
observed 0.75-0.98 x. Against a single process stepping the same shards it is the DDP bound (10%).
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integrations import _dist_worker as W

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
from safetensors.torch import load_file  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[2]
WORLD = 2
TIMEOUT_S = 300
DDP_TOL = 0.10  # x ||8-bit - 32-bit||, see module docstring
SHARDED_VS_UNSHARDED_TOL = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    """Run every scenario once in one 2-rank gloo group; returns (results, tensors, seed)."""
    seed = int(os.environ.get("EIGHTBIT_TEST_SEED", random.SystemRandom().randrange(2**16)))
    out = tmp_path_factory.mktemp("dist")
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
        log = open(out / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.integrations._dist_worker", "--out", str(out), "--seed", str(seed)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    tails = []
    for log in logs:
        log.seek(0)
        tails.append(log.read()[-3000:])
        log.close()
    if any(p.returncode != 0 for p in procs) or not (out / "results.json").exists():
        pytest.fail(f"distributed worker failed (EIGHTBIT_TEST_SEED={seed}), rc={[p.returncode for p in procs]}:\n"
                    + "\n----\n".join(tails))
    results = json.loads((out / "results.json").read_text())
    return results, load_file(str(out / "tensors.safetensors")), seed


def _scenario(dist_run, name: str) -> dict:
    results, _, seed = dist_run
    res = results[name]
    assert "error" not in res, f"EIGHTBIT_TEST_SEED={seed}\n{res['error']}"
    return res


def _params(tensors: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d[k].double().reshape(-1) for k in sorted(d)])


def _distance(a: dict, b: dict, trim: float = 0.0) -> float:
    """L2 distance of all parameters; ``trim``: leave out that fraction of the largest element differences."""
    assert a.keys() == b.keys()
    d = (_flat(a) - _flat(b)).abs()
    if trim:
        d = d.sort().values[: d.numel() - int(trim * d.numel())]
    return float(d.norm())


@pytest.fixture(scope="module")
def references(dist_run):
    """Single-process runs (memoized): (optimizer name, shards) -> final parameters."""
    seed = dist_run[2]
    cache: dict = {}

    def get(name: str, shards: int = 1) -> dict[str, torch.Tensor]:
        if (name, shards) not in cache:
            cache[(name, shards)] = W.train_single(name, seed, shards=shards)
        return cache[(name, shards)]

    return get


# ----------------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("opt", W.DDP_OPTIMIZERS)
def test_ddp_ranks_bit_identical_and_8bit(dist_run, opt):
    res = _scenario(dist_run, f"ddp_{opt}")
    assert len(set(res["digests"])) == 1, res["digests"]
    # weights (>= min_8bit_size elements) have uint8 state, biases fp32
    assert {k: v for k, v in res["state_dtypes"].items()} == {
        "fc1.weight": "uint8", "fc2.weight": "uint8", "fc3.weight": "uint8",
        "fc1.bias": "float32", "fc2.bias": "float32", "fc3.bias": "float32",
    }
    assert res["state_bytes"][0] == res["state_bytes"][1] > 0


@pytest.mark.parametrize("opt", W.DDP_OPTIMIZERS)
def test_ddp_matches_single_process_within_8bit_rounding(dist_run, references, opt):
    _scenario(dist_run, f"ddp_{opt}")
    _, tensors, seed = dist_run
    ddp = _params(tensors, f"ddp_{opt}")
    single8, single32 = references(opt), references(opt.replace("8bit", "32bit"))
    init = W.full_params(W.make_model(seed))
    quant = _distance(single8, single32)
    assert _distance(single8, init) > 10 * quant > 0  # training moved the weights; 8-bit differs from 32-bit
    d = _distance(ddp, single8)
    assert d <= DDP_TOL * quant, f"seed {seed}: ||ddp - single|| = {d:.3g}, 8-bit vs 32-bit = {quant:.3g}"


# ---------------------------------------------------------------------------------------------- ZeRO
def test_zero_shards_8bit_state_and_equals_ddp(dist_run):
    res = _scenario(dist_run, "zero")
    ddp = _scenario(dist_run, "ddp_AdamW8bit")
    # every rank ends with the same parameters, bit-identical to the DDP run (same per-parameter steps)
    assert len(set(res["digests"])) == 1
    assert res["digests"][0] == ddp["digests"][0]
    # each parameter's state lives on exactly one rank, 8-bit where it is 8-bit without ZeRO
    owned = [set(d) for d in res["state_dtypes"]]
    assert not owned[0] & owned[1] and owned[0] | owned[1] == set(ddp["state_dtypes"])
    merged = {k: v for d in res["state_dtypes"] for k, v in d.items()}
    assert merged == ddp["state_dtypes"]
    per_rank, full = res["state_bytes"], res["unsharded_state_bytes"]
    # each rank holds its own copy of the two shared 256-entry code maps (2 KiB); everything else is sharded
    assert full == ddp["state_bytes"][0] and sum(per_rank) == full + (len(per_rank) - 1) * 2 * 256 * 4
    assert max(per_rank) < 0.6 * full  # about half per rank
    assert full < 0.3 * res["unsharded_32bit_state_bytes"]


def test_zero_consolidated_checkpoint_resumes_bit_identically(dist_run):
    res = _scenario(dist_run, "zero_checkpoint")
    assert res["params_identical"] == [True] * WORLD
    merged = {k: v for d in res["state_dtypes"] for k, v in d.items()}  # 8-bit codes survive the round trip
    assert merged["fc1.weight"] == "uint8" and merged["fc1.bias"] == "float32" and len(merged) == 6


# --------------------------------------------------------------------------------------------- FSDP2
@pytest.mark.parametrize("opt", W.FSDP2_OPTIMIZERS)
def test_fsdp2_state_is_per_shard_and_8bit(dist_run, opt):
    res = _scenario(dist_run, f"fsdp2_{opt}")
    unsharded = {"fc1.weight", "fc2.weight", "fc3.weight"}
    for rank in range(WORLD):
        # the 8-bit decision follows the whole parameter (fc3's 3200-element shard of a 6400-element weight too)
        assert {k for k, v in res["state_dtypes"][rank].items() if v == "uint8"} == unsharded
        assert res["local_numel"][rank]["fc1.weight"] == W.HID1 * W.IN // WORLD
    ddp = _scenario(dist_run, "ddp_AdamW8bit")
    if opt == "AdamW8bit":  # half the state per rank (plus a few absmax for the split blocks)
        assert max(res["state_bytes"]) <= 0.55 * ddp["state_bytes"][0]


@pytest.mark.parametrize("opt", W.FSDP2_OPTIMIZERS)
def test_fsdp2_matches_single_process(dist_run, references, opt):
    _scenario(dist_run, f"fsdp2_{opt}")
    _, tensors, seed = dist_run
    fsdp = _params(tensors, f"fsdp2_{opt}")
    single8, single32 = references(opt), references(opt.replace("8bit", "32bit"))
    # The bulk of the parameters (all but the 0.1 % largest differences): an element whose v rounds to zero in
    # its block takes one large step (lr * m / eps, the known 8-bit effect); moved block boundaries move it to
    # another element, and one such element alone was 3x the whole 8-bit-vs-32-bit distance (seed 46157).
    quant = _distance(single8, single32, trim=0.001)
    d_unsharded = _distance(fsdp, single8, trim=0.001)
    assert d_unsharded <= SHARDED_VS_UNSHARDED_TOL * quant, (seed, d_unsharded, quant)
    quant = _distance(single8, single32)
    if opt != "LAMB8bit":  # LAMB's trust ratio uses whole-tensor norms, which per-chunk stepping cannot emulate
        d_emulated = _distance(fsdp, references(opt, WORLD))
        assert d_emulated <= DDP_TOL * quant, (seed, d_emulated, quant)


@pytest.mark.parametrize("opt", W.FSDP2_32BIT)
def test_fsdp2_whole_tensor_norms(dist_run, references, opt):
    """LAMB's trust ratio and percentile clipping use norms of the whole parameter, not of the shard: with
    32-bit state the FSDP2 run equals the single-process run up to gradient summation order (observed
    ~1e-6 of the distance moved; per-shard norms would give ~5e-3)."""
    _scenario(dist_run, f"fsdp2_{opt}")
    _, tensors, seed = dist_run
    fsdp, single = _params(tensors, f"fsdp2_{opt}"), references(opt)
    moved = _distance(single, W.full_params(W.make_model(seed)))
    assert _distance(fsdp, single) <= 1e-4 * moved, (seed, _distance(fsdp, single), moved)


def test_fsdp2_empty_shard_and_nonfinite_gradient(dist_run):
    res = _scenario(dist_run, "fsdp2_edges")
    assert res["local_rows"] == [1, 0]  # rank 1 holds an empty shard of the (1, 64) weight
    assert res["state_keys"][0] == res["state_keys"][1]  # same state layout on every rank (DCP needs it)
    # a NaN in rank 0's shard of the first weight made every rank skip that parameter's step, nothing else
    assert res["skipped"] == [[1, 0, 0, 0]] * WORLD and res["steps"] == [[2, 3, 3, 3]] * WORLD
    # same as one process up to the 8-bit rounding: the shards cut the 64-element blocks differently (a bias of
    # 64 values is two blocks of 32 under FSDP2), a different rounding of the same 32-bit trajectory, so the
    # bound is the triangle inequality's ~2x the single process's own 8-bit-vs-32-bit distance, with room for one
    # element whose v rounds to zero in one partition only: 3x (observed 0.4-1.0x over 5 seeds; the fixed 2e-3
    # it replaces was exceeded by chance, 2.2e-3 on 0.bias; a wrong shard would be off by ~100 %)
    for name, rel in res["rel_diff_to_single"].items():
        quant = res["rel_8bit_vs_32bit"][name]
        assert rel <= 3 * quant + 1e-6, (name, rel, quant)


# ----------------------------------------------------------------------------------------------- DCP
@pytest.mark.parametrize("kind", ["fsdp2", "ddp"])
def test_dcp_resume_is_bit_identical(dist_run, kind):
    res = _scenario(dist_run, f"dcp_{kind}")
    assert res["params_identical"] == [True] * WORLD
    assert res["state_identical"] == [True] * WORLD
    assert res["n_state_tensors"] >= 6 * 4
    if kind == "fsdp2":  # another blocksize (or world size) cannot load silently: DCP reports the size mismatch
        assert res["mismatch_error"] == ["CheckpointException, size mismatch reported: True"] * WORLD


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_on_linear8bitlt_under_ddp(dist_run):
    pytest.importorskip("peft")
    res = _scenario(dist_run, "lora")
    _, tensors, seed = dist_run
    assert len(set(res["digests"])) == 1
    assert res["int8_unchanged"] == [True] * WORLD and res["n_int8_buffers"] == 3
    assert res["lora_layers"] == ["LoraLinear8bitLt", "LoraLinear8bitLt"]
    assert res["state_dtypes"] == ["uint8"]
    lora = _params(tensors, "lora")
    init = W.trainable_params(W.make_lora_model(seed))
    single8, single32 = W.train_lora_single(seed, 8), W.train_lora_single(seed, 32)
    quant = _distance(single8, single32)
    assert _distance(single8, init) > 10 * quant > 0
    assert _distance(lora, single8) <= DDP_TOL * quant


# ------------------------------------------------------------------------------ helpers without a group
def test_optimizer_state_bytes_counts_8bit_state():
    from eightbit.integrations.distributed import optimizer_state_bytes

    model = W.make_model(0)
    opt = W._stepped(W.make_optimizer("AdamW8bit", model.parameters()))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    nblocks = sum(-(-p.numel() // W.BLOCKSIZE) for n, p in model.named_parameters() if n.endswith("weight"))
    n8 = sum(1 for n, _ in model.named_parameters() if n.endswith("weight"))
    counters = 6 * 3 * 8 + n8 * 8  # step, skipped_steps, skipped_blocks (int64) per parameter; blocksize per 8-bit one
    code_maps = 2 * 256 * 4  # the signed and unsigned dynamic maps, shared by every parameter
    assert optimizer_state_bytes(opt) == 2 * weights + 2 * 4 * nblocks + 2 * 4 * biases + counters + code_maps


def test_get_state_dict_without_dtensors_is_torchs():
    from torch.distributed.checkpoint.state_dict import get_state_dict as torch_get

    from eightbit.integrations.distributed import get_state_dict

    model = W.make_model(0)
    opt = W._stepped(W.make_optimizer("AdamW8bit", model.parameters()))
    ours, theirs = get_state_dict(model, opt), torch_get(model, opt)
    assert ours[1]["state"].keys() == theirs[1]["state"].keys()
    for fqn, st in theirs[1]["state"].items():
        for k, v in st.items():
            assert torch.equal(ours[1]["state"][fqn][k], v) and ours[1]["state"][fqn][k].dtype == v.dtype
