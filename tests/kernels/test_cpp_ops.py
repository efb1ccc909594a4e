"""The C++ CPU kernel of eightbit::int8_linear (kernels/cpu/cpp, loaded by kernels/cpu/torch_ext.py): it loads
wherever a C++ compiler is, gives the reference's result bit for bit on the cases it takes, and hands every other
case (dtypes, more than 32 outlier columns, rows for the reference, forced references) to the Python kernel."""
import shutil
import threading

import pytest
import torch

from eightbit.functional import ops
from eightbit.functional.int8 import int8_linear_reference
from eightbit.functional.vectorwise import quantize_vectorwise
from eightbit.kernels import reference_only
from eightbit.kernels.cpu import native, torch_ext

pytestmark = pytest.mark.skipif(native.library() is None, reason="no native library (no C compiler)")


def _cxx_present() -> bool:
    return any(shutil.which(n) for n in ("c++", "g++", "clang++"))


def test_cpp_kernel_loads_where_a_cxx_compiler_is():
    """With a C++ compiler (CI has one) the C++ kernel serves the op: a failed build would only warn and fall
    back, so this makes it visible."""
    if not _cxx_present():
        pytest.skip("no C++ compiler here: the Python kernel serves the op")
    assert torch_ext.int8_linear_loaded()
    assert "int8_linear_op.cpp" in torch._C._dispatch_dump("eightbit::int8_linear")


def _ops_called(fn) -> set:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("eightbit")}


def test_cpp_kernel_serves_the_common_case_itself(gen):
    """Bound to its native functions and limits (kernels/cpu/int8.py binds them), the C++ kernel computes a call
    with up to 32 outlier columns without the Python kernel and hands one with more to it; an unbound kernel
    would hand over every call and still give the reference's results."""
    if not torch_ext.int8_linear_loaded():
        pytest.skip("the C++ kernel is not loaded here")
    x, w, wa, b = _case(gen, 12, 384, 96, 3)
    assert _ops_called(lambda: ops.int8_linear(x, w, wa, b, 6.0)) == {"eightbit::int8_linear"}
    x, w, wa, b = _case(gen, 12, 384, 96, 40)
    assert "eightbit_cpu::int8_linear_py" in _ops_called(lambda: ops.int8_linear(x, w, wa, b, 6.0))


def _case(gen, m, k, n, n_outliers, x_dtype=torch.float32, bias_dtype=torch.float32):
    w_int8, w_absmax = quantize_vectorwise(torch.randn(n, k, generator=gen))
    x = torch.randn(m, k, generator=gen)
    cols = torch.randperm(k, generator=gen)[:n_outliers]
    x[:, cols] += torch.where(x[:, cols] < 0, -30.0, 30.0)
    bias = None if bias_dtype is None else torch.randn(n, generator=gen).to(bias_dtype)
    return x.to(x_dtype), w_int8, w_absmax, bias


def _same(got, want):
    return got.dtype == want.dtype and torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(),
                                                                                              want.nan_to_num())


@pytest.mark.parametrize("m,k,n", [(1, 384, 384), (12, 384, 1536), (12, 1536, 384), (70, 257, 45), (300, 100, 33)])
@pytest.mark.parametrize("n_outliers", [0, 3, 40])  # 40: more than the epilogue's 32, handed to the Python kernel
def test_cpp_int8_linear_equals_reference(gen, m, k, n, n_outliers):
    x, w, wa, b = _case(gen, m, k, n, min(n_outliers, k))
    for threshold in (6.0, 0.0):
        for _ in range(2):  # the second call runs with the first call's outlier guess
            assert _same(ops.int8_linear(x, w, wa, b, threshold), int8_linear_reference(x, w, wa, b, threshold))


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bias_dtype", [None, torch.bfloat16, torch.float64])
def test_cpp_int8_linear_dtypes(gen, x_dtype, bias_dtype):
    x, w, wa, b = _case(gen, 20, 130, 50, 2, x_dtype, bias_dtype)
    got = ops.int8_linear(x, w, wa, b, 6.0)
    assert _same(got, int8_linear_reference(x, w, wa, b, 6.0)) and got.dtype == x_dtype


def test_cpp_int8_linear_hands_over_special_rows_and_thresholds(gen):
    """A NaN row and a subnormal-scale row go to the reference (through the Python kernel); a positive threshold
    that float32 rounds to 0 as well; non-contiguous inputs are made contiguous."""
    x, w, wa, b = _case(gen, 16, 96, 40, 2)
    x[3, 5] = float("nan")
    assert _same(ops.int8_linear(x, w, wa, b, 6.0), int8_linear_reference(x, w, wa, b, 6.0))
    y = x.clone()
    y[3] = 1e-38
    assert _same(ops.int8_linear(y, w, wa, b, 6.0), int8_linear_reference(y, w, wa, b, 6.0))
    x = x.nan_to_num()
    assert _same(ops.int8_linear(x, w, wa, b, 1e-50), int8_linear_reference(x, w, wa, b, 1e-50))
    xt = torch.randn(96, 16, generator=gen).T  # (16, 96), strided
    assert _same(ops.int8_linear(xt, w, wa, b, 6.0), int8_linear_reference(xt, w, wa, b, 6.0))


def test_cpp_int8_linear_obeys_forced_references(gen, monkeypatch):
    """reference_only() and EIGHTBIT_REFERENCE=1 reach the C++ kernel too: the reference of record runs."""
    x, w, wa, b = _case(gen, 12, 64, 32, 1)
    marker = torch.full((12, 32), 7.0)
    monkeypatch.setitem(ops.REFERENCES, "int8_linear", lambda *args: marker)
    with reference_only():
        assert ops.int8_linear(x, w, wa, b, 6.0) is marker
    assert ops.int8_linear(x, w, wa, b, 6.0) is not marker  # switched back
    monkeypatch.setenv("EIGHTBIT_REFERENCE", "1")
    assert ops.int8_linear(x, w, wa, b, 6.0) is marker
    monkeypatch.delenv("EIGHTBIT_REFERENCE")
    assert ops.int8_linear(x, w, wa, b, 6.0) is not marker


def test_cpp_int8_linear_threads(gen):
    """Each thread has its own scratch and guesses: concurrent calls on shared weights stay exact."""
    cases = [_case(gen, m, 200, 64, c) for m, c in [(9, 0), (40, 3), (12, 5), (100, 1)]]
    wants = [int8_linear_reference(*c, 6.0) for c in cases]
    errors = []

    def work(seed):
        for i in range(60):
            j = (seed + i) % len(cases)
            if not _same(ops.int8_linear(*cases[j], 6.0), wants[j]):
                errors.append((seed, i))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_failed_cpp_build_falls_back_to_the_python_kernel(tmp_path):
    """A C++ build that fails (here: a compiler that always fails) warns once and leaves the Python kernel serving
    the op, with the same results."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import eightbit\n"
        "    from eightbit.kernels.cpu import torch_ext\n"
        "    assert not torch_ext.int8_linear_loaded()\n"
        "assert any('C++ op kernels unavailable' in str(w.message) for w in caught), [str(w.message) for w in caught]\n"
        "from eightbit.functional import ops\n"
        "from eightbit.functional.int8 import int8_linear_reference\n"
        "from eightbit.functional.vectorwise import quantize_vectorwise\n"
        "assert 'int8_linear_op.cpp' not in torch._C._dispatch_dump('eightbit::int8_linear')\n"
        "w, wa = quantize_vectorwise(torch.randn(40, 64))\n"
        "x = torch.randn(12, 64); x[:, 3] = 20\n"
        "assert torch.equal(ops.int8_linear(x, w, wa, None, 6.0), int8_linear_reference(x, w, wa, None, 6.0))\n"
    )
    env = dict(os.environ, CXX=shutil.which("false") or "/bin/false")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def test_int8_linear_op_rejects_mismatched_shapes_and_serves_other_absmax_dtypes(gen):
    """Called directly (the public function checks first), the op's kernels read the weight, absmax and bias by
    pointer: mismatched shapes are a ValueError, not a read past the end. An absmax in another float dtype goes
    to the reference, which computes in that dtype."""
    x, w, wa, b = _case(gen, 12, 64, 32, 1)
    bad = [(x, w[:, :8].contiguous(), wa, b), (x, w, wa[:5], b), (x, w, wa.view(32, 1), b), (x, w, wa, b[:1])]
    kernels = [torch.ops.eightbit.int8_linear.default]
    if torch_ext.int8_linear_loaded():
        kernels.append(torch.ops.eightbit_cpu.int8_linear_py.default)
    for op in kernels:
        for args in bad:
            with pytest.raises(ValueError, match="int8_linear"):
                op(*args, 6.0)
    for dtype in (torch.bfloat16, torch.float64):
        wad = wa.to(dtype)
        assert _same(ops.int8_linear(x, w, wad, b, 6.0), int8_linear_reference(x, w, wad, b, 6.0))
