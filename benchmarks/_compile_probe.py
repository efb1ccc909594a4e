"""Child process of the "compile" case: import eightbit, then time the first and second call of each op
that runs a compiled kernel. Prints one JSON object on stdout. Usage: python -m benchmarks._compile_probe OPS"""
from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402

torch.set_num_threads(2)
T_TORCH = time.perf_counter() - T0


def _ops(n: int) -> dict:
    def fp8():
        from eightbit.functional import dequantize_fp8, quantize_fp8

        x = torch.randn(n)
        return lambda: dequantize_fp8(*quantize_fp8(x, format="e4m3"), format="e4m3")

    def blockwise():
        from eightbit.functional import dequantize_blockwise, quantize_blockwise

        x = torch.randn(n)
        return lambda: dequantize_blockwise(*quantize_blockwise(x, blocksize=2048))

    def optim():
        from eightbit.optim import AdamW8bit

        p = torch.nn.Parameter(torch.randn(n // 1024, 1024))
        p.grad = torch.randn_like(p)
        opt = AdamW8bit([p], 1e-3)
        return opt.step

    def linear():
        from eightbit.nn import Linear8bitLt

        layer = Linear8bitLt.from_linear(torch.nn.Linear(1024, 1024), threshold=6.0)
        x = torch.randn(8, 1024)
        x[:, 3] = 10.0  # one outlier column: exercises the decomposition too

        def fn():
            with torch.inference_mode():
                return layer(x)

        return fn

    return {"fp8": fp8, "blockwise": blockwise, "optim": optim, "linear": linear}


def main(names: list[str]) -> None:
    t = time.perf_counter()
    out: dict = {"torch_import_s": T_TORCH}
    try:
        import eightbit.kernels  # noqa: F401  (registers the compiled kernels)

        out["eightbit_import_s"] = time.perf_counter() - t
        out["kernels"] = [f"{op}/{dev}" for op, dev in eightbit.kernels.registered_kernels()]
    except Exception as e:  # noqa: BLE001
        out["eightbit_import_error"] = f"{type(e).__name__}: {e}"
    ops = _ops(1 << 20)
    results = {}
    for name in names:
        try:
            fn = ops[name]()
        except (ImportError, AttributeError, NotImplementedError) as e:
            results[name] = {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:160]}
            continue
        try:
            t = time.perf_counter()
            fn()
            first = time.perf_counter() - t
            t = time.perf_counter()
            fn()
            second = time.perf_counter() - t
            results[name] = {"status": "ok", "first_s": first, "second_s": second}
        except Exception as e:  # noqa: BLE001
            results[name] = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:160]}
    out["ops"] = results
    out["total_s"] = time.perf_counter() - T0
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["fp8", "blockwise", "optim", "linear"])
