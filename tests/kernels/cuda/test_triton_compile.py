"""Every Triton kernel configuration compiles for sm_90 (H100/H200) and sm_80 (A100) without a GPU, and its PTX
says what the interpreter cannot: the GEMMs use the int8 tensor-core MMA, no kernel divides or takes square
roots approximately, only the L2-weight-decay optimizer variant contains FMAs (the ones it asks for), and the
activation quantizer keeps its round-half-even constant. Compilation runs in a subprocess: this directory's
tests interpret the kernels (TRITON_INTERPRET=1), and an interpreted kernel cannot be compiled."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "eightbit.kernels.cuda.compile_check", "90", "80"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_every_kernel_compiles(compiled):
    failed = [(r["capability"], r["name"], r["error"]) for r in compiled if not r["ok"]]
    assert not failed, failed
    names = {r["name"] for r in compiled}
    assert {n.split("/")[0] for n in names} == {"outlier_columns", "row_quant", "int8_gemm", "quantize_blockwise",
                                               "dequantize_blockwise", "optimizer"}
    assert {r["capability"] for r in compiled} == {80, 90}


def test_gemms_use_int8_tensor_cores(compiled):
    gemms = [r for r in compiled if r["wants_int8_mma"]]
    assert gemms and all(r["int8_mma"] for r in gemms), [r["name"] for r in gemms if not r["int8_mma"]]
    hopper_large = [r for r in gemms if r["capability"] == 90 and "/m16/" not in r["name"]]
    assert all(any(i.startswith("wgmma") for i in r["int8_mma"]) for r in hopper_large)


def test_no_approximate_math_and_no_contraction(compiled):
    assert not [r["name"] for r in compiled if r["approx"]]
    assert not [r["name"] for r in compiled if r["fma"] and not r["may_fma"]]
    assert all(r["fma"] > 0 for r in compiled if r["may_fma"])  # tl.fma is kept where it is asked for


def test_round_half_even_constant_survives(compiled):
    rows = [r for r in compiled if r["name"].startswith("row_quant")]
    assert rows and all(r["rne"] for r in rows)
