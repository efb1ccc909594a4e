"""Per-call overhead and small-step timings (BENCHMARKS.md, "Before/after the op layer"): Linear8bitLt 64x64 and
4096x4096 at M=1 and 512, quantize_blockwise of 16M values, AdamW8bit / Lion8bit steps at 20M parameters; medians
in one process, printed as JSON. Usage: python -m benchmarks.op_overhead"""
import json
import time

import torch
torch.set_num_threads(2)
from eightbit.nn import Linear8bitLt
import eightbit.functional as F
import eightbit.optim as O
def med(fn, n):
    fn(); fn()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[len(ts)//2]*1e3
res={}
torch.manual_seed(0)
with torch.inference_mode():
    l=Linear8bitLt.from_linear(torch.nn.Linear(64,64)); x=torch.randn(1,64)
    res["linear64_M1_us"]=med(lambda: l(x), 2000)*1e3
    l=Linear8bitLt.from_linear(torch.nn.Linear(4096,4096)); x=torch.randn(1,4096)
    res["linear4096_M1_ms"]=med(lambda: l(x), 200)
    x=torch.randn(512,4096)
    res["linear4096_M512_ms"]=med(lambda: l(x), 10)
v=torch.randn(16<<20)
res["qblockwise_16M_ms"]=med(lambda: F.quantize_blockwise(v), 20)
p=torch.nn.Parameter(torch.randn(20_000_000)); p.grad=torch.randn_like(p)
o=O.AdamW8bit([p],1e-3)
res["adamw8bit_20M_ms"]=med(o.step, 15)
p2=torch.nn.Parameter(torch.randn(20_000_000)); p2.grad=torch.randn_like(p2)
o2=O.Lion8bit([p2],1e-4)
res["lion8bit_20M_ms"]=med(o2.step, 15)
print(json.dumps({k: round(v,3) for k,v in res.items()}))
