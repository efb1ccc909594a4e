"""Shared test fixtures: a fresh random seed per test (printed on failure, fixed with EIGHTBIT_TEST_SEED),
and numeric helpers judged both by SQNR and by the fraction of elements out of tolerance."""
from __future__ import annotations

import os
import random

# The Triton kernels' tests interpret the kernels on CPU tensors (tests/kernels/cuda). Triton reads the switch
# when it defines a kernel, its own library functions (tl.max, ...) included, so it must be set before the
# first `import triton` of the session, which torch.compile's modules may do while tests are collected.
if os.environ.get("EIGHTBIT_TRITON_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

try:  # property tests: a failure prints the blob that replays it (@reproduce_failure), and the run's seed
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("eightbit", print_blob=True)
    _hsettings.load_profile("eightbit")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """One hypothesis seed per run, chosen here (EIGHTBIT_HYPOTHESIS_SEED or --hypothesis-seed replays it) so
    that it can be printed: a red CI run is replayed with the seed from its log."""
    if getattr(config.option, "hypothesis_seed", None) is None:
        env = os.environ.get("EIGHTBIT_HYPOTHESIS_SEED")
        config.option.hypothesis_seed = int(env) if env else random.SystemRandom().randrange(2**32)


def pytest_report_header(config):
    seed = getattr(config.option, "hypothesis_seed", None)
    return f"hypothesis seed {seed}: replay with EIGHTBIT_HYPOTHESIS_SEED={seed} (or --hypothesis-seed={seed})"


@pytest.fixture
def seed(request) -> int:
    """A fresh seed each run; torch/random are seeded with it and it is shown in the failure report."""
    value = int(os.environ.get("EIGHTBIT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.fixture
def gen(seed) -> torch.Generator:
    """A torch.Generator seeded with the test's fresh seed."""
    return torch.Generator().manual_seed(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for k, v in item.user_properties:
            if k == "seed":
                rep.sections.append(("seed", f"EIGHTBIT_TEST_SEED={v} reproduces this run"))
        if getattr(item.obj, "is_hypothesis_test", False):
            seed = item.config.option.hypothesis_seed
            rep.sections.append(("hypothesis seed", f"EIGHTBIT_HYPOTHESIS_SEED={seed} replays this run (the "
                                 "falsifying example and its @reproduce_failure blob are printed above)"))
