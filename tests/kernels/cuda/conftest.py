"""The Triton (CUDA) kernels' tests. On a CPU machine (CI) they run on CPU tensors through Triton's
interpreter: ``TRITON_INTERPRET=1`` must be set before the kernels are defined, so it is set here, before any
test module of this directory imports them. On a GPU machine, ``EIGHTBIT_TRITON_DEVICE=cuda`` runs the same
tests compiled, on CUDA tensors, against the references computed on CPU.
Triton comes with the ``gpu-test`` extra; CI installs it, so there a missing Triton is an error, not a skip."""
import importlib.util
import os

import pytest

DEVICE = os.environ.get("EIGHTBIT_TRITON_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise RuntimeError(f"EIGHTBIT_TRITON_DEVICE must be cpu or cuda, got {DEVICE!r}")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

if importlib.util.find_spec("triton") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the gpu-test extra (triton): the Triton kernel tests cannot run")
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True)
def _mode():
    """Interpreted on CPU, compiled on CUDA: never a mix (an interpreted kernel cannot take CUDA tensors)."""
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1"
    else:
        import torch
        assert torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"


def pytest_collection_modifyitems(items):
    # the interpreter's own numpy warnings (deprecated scalar conversion, NaN arithmetic the kernels mask)
    for item in items:
        if "kernels/cuda" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))
            item.add_marker(pytest.mark.filterwarnings("ignore::RuntimeWarning"))
