"""The Triton kernels behind the dispatcher, as a model would meet them on a GPU: a child process registers them
as the CPU kernels (interpreted) and runs Linear8bitLt (fp32, bf16, with outliers), torch.compile(fullgraph=True),
three optimizers and torch.library.opcheck through the ops (dispatch_child.py); everything must equal the
references. A child process because registering them for CPU replaces the native kernels for the process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .device import DEVICE


@pytest.mark.skipif(DEVICE.type != "cpu", reason="on a GPU the kernels serve CUDA tensors through the dispatcher already")
def test_triton_kernels_through_the_dispatcher(seed):
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.cuda.dispatch_child", str(seed)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in results.items() if v is not True}
    assert not bad, bad
    assert len(results) == 12
