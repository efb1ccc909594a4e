"""Shared test fixtures: a fresh random seed per test (printed on failure, fixed with EIGHTBIT_TEST_SEED),
and numeric helpers judged both by SQNR and by the fraction of elements out of tolerance."""
from __future__ import annotations

import os
import random

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
