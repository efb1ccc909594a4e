"""Fixtures of the kernel tests."""
import shutil

import pytest

from eightbit.kernels.cpu import native


@pytest.fixture(scope="module")
def lib():
    """The native C library; skips where no C compiler exists, fails where one exists but the build did not."""
    lib = native.library()
    if lib is None and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert lib is not None, "a C compiler exists but the native kernels did not build"
    return lib
