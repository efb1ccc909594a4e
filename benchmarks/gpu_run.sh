#!/usr/bin/env bash
# The measured GPU run (issue 15, item 6), prepared as one script of at most ten minutes for a lent GPU machine:
# the Triton kernels' tests compiled on CUDA tensors (no interpreter), then the GPU benchmark. Uses the machine's
# own torch and triton (no installs: that machine has no network); eightbit from this checkout via PYTHONPATH.
# Results go to $OUT (the device tool's output folder) or /tmp/eightbit-gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/eightbit-gpu}"
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/machine.txt"
EIGHTBIT_TRITON_DEVICE=cuda timeout 240 python -m pytest -q -p no:cacheprovider tests/kernels/cuda \
  tests/optim/test_paging.py 2>&1 | tee "$OUT/tests.txt"
timeout 330 python -m benchmarks --device cuda --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/bench.txt"
