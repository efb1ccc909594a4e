"""Child process of test_triton_dispatch.py: the Triton kernels registered as the *CPU* kernels of the eightbit
ops (interpreted), then whole layers, optimizers, torch.compile and opcheck through the dispatcher, each compared
with the references. Prints one JSON object."""
import json
import os
import sys
import warnings

os.environ["TRITON_INTERPRET"] = "1"
warnings.filterwarnings("ignore")

import torch  # noqa: E402

import eightbit.kernels.cuda as cuda_kernels  # noqa: E402
import eightbit.optim as O  # noqa: E402
from eightbit.functional import ops  # noqa: E402
from eightbit.kernels import reference_only  # noqa: E402
from eightbit.nn import Linear8bitLt  # noqa: E402

from eightbit.kernels.registry import _REGISTERED  # noqa: E402

cuda_kernels.register_all("cpu")
seed = int(sys.argv[1])
torch.manual_seed(seed)
out = {"served_by_triton": all(_REGISTERED[(op, "cpu")] is fn for op, fn in cuda_kernels.KERNELS.items())}

# LLM.int8(): the outlier product is the same torch matmul in both paths, so the whole output is bit-identical
lin = torch.nn.Linear(96, 40)
layer = Linear8bitLt.from_linear(lin, threshold=6.0)
for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(2, 7, 96).to(dtype)
    x[..., 11] *= 25
    y = layer.to(dtype)(x)
    with reference_only():
        y_ref = layer(x)
    out[f"linear_{dtype}"] = bool(torch.equal(y, y_ref))
layer = layer.float()
x = torch.randn(3, 96)
x[:, 5] = 40.0
compiled = torch.compile(layer, fullgraph=True)
out["compile_fullgraph"] = bool(torch.equal(compiled(x), layer(x)))

# optimizers through the op: states bit-identical to the reference after 4 steps
for name in ("AdamW8bit", "Lion8bit", "LAMB8bit"):
    p1 = torch.nn.Parameter(torch.randn(2048 + 100))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = getattr(O, name)([p1], 1e-3), getattr(O, name)([p2], 1e-3)
    same = True
    for _ in range(4):
        g = torch.randn_like(p1)
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        with reference_only():
            o2.step()
        same &= all(torch.equal(v.nan_to_num(), o2.state[p2][k].nan_to_num()) for k, v in o1.state[p1].items())
    out[f"optim_{name}"] = bool(same)

# opcheck: schema, fake implementation and (for the in-place ops) aliasing, with the Triton kernels serving
code = torch.linspace(-1, 1, 256)
checks = {
    "int8_linear": (torch.randn(4, 64), torch.randint(-127, 128, (8, 64), dtype=torch.int8), torch.rand(8) + 0.1,
                    torch.randn(8), 6.0),
    "int8_mm": (torch.randint(-128, 128, (3, 40), dtype=torch.int8), torch.randint(-128, 128, (5, 40), dtype=torch.int8)),
    "int8_vectorwise_quant": (torch.randn(6, 33), 2.0),
    "quantize_blockwise": (torch.randn(300), code, 64),
    "dequantize_blockwise": (torch.randint(0, 256, (300,), dtype=torch.uint8), torch.rand(5), code, 64, torch.bfloat16),
}
for name, args in checks.items():
    try:
        torch.library.opcheck(getattr(ops, name), args, test_utils=("test_schema", "test_faketensor"))
        out[f"opcheck_{name}"] = True
    except Exception as e:  # reported to the parent test
        out[f"opcheck_{name}"] = f"{type(e).__name__}: {e}"[:500]
print(json.dumps(out))
