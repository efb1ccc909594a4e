"""Compile every Triton kernel configuration for a GPU architecture without a GPU, and check the PTX.

The interpreter runs the kernels' arithmetic but accepts programs the compiler rejects (an int8 ``tl.dot`` with
fewer than 32 K per tile, for one); this builds each kernel and configuration the launchers can pick with
``triton.compile`` for ``GPUTarget("cuda", capability, 32)`` and reads the PTX: the GEMMs must use the int8
tensor-core MMA (``mma.sync ... s32.s8.s8`` or Hopper's ``wgmma ... s32.s8.s8``), no kernel may use
approximate division or square root, and none may contain a fused multiply-add the source does not ask for
(the reference rounds every product); the activation quantizer's round-half-even constant (1.5 * 2**23,
``0f4B400000``) must survive compilation (an optimizer folding ``(v + c) - c`` would break rounding). Run it where ``TRITON_INTERPRET`` is unset:
``python -m eightbit.kernels.cuda.compile_check 90`` prints one JSON object per kernel.
"""
from __future__ import annotations

import json
import os
import re
import sys

_PTR = {"i8": "*i8", "u8": "*u8", "i16": "*i16", "i32": "*i32", "f16": "*fp16", "f32": "*fp32", "f64": "*fp64"}
_KIND_PTR = {0: "*fp32", 1: "*fp16", 2: "*i16", 3: "*fp64"}
INT8_MMA = re.compile(r"\b(?:wgmma\.mma_async(?:\.sync)?|mma\.sync)\.aligned\.[\w.]*s32\.s8\.s8")
APPROX = re.compile(r"\b(?:div\.(?:full|approx)\.f32|sqrt\.approx\.f32|rsqrt\.approx)")
FMA32 = re.compile(r"\bfma\.rn(?:\.ftz)?\.f32\b")


def _cases():
    """(name, kernel, signature, constexprs, options, expects_int8_mma, may_fma) for every configuration."""
    from ...functional.optimizer import FIELDS
    from . import blockwise, int8, optimizer
    from ._common import warps_for_block

    for kind in (0, 1, 2):
        yield (f"outlier_columns/kind{kind}", int8.outlier_columns_kernel,
               {"x_ptr": _KIND_PTR[kind], "flags_ptr": "*i32", "M": "i32", "K": "i32", "threshold": "fp32"},
               {"KIND": kind, "BLOCK_M": 32, "BLOCK_K": 128}, {}, False, False)
        for flags in (False, True):
            yield (f"row_quant/kind{kind}/flags{int(flags)}", int8.row_quant_kernel,
                   {"x_ptr": _KIND_PTR[kind], "flags_ptr": "*i32", "q_ptr": "*i8", "absmax_ptr": "*fp32", "K": "i32"},
                   {"HAS_FLAGS": flags, "KIND": kind, "BLOCK_K": 1024}, {}, False, False)
    for config, (bm, bn, bk, group, warps, stages) in int8.GEMM_CONFIGS.items():
        for epi, out, extra, bias, kind in ((0, "*i32", False, False, 0), (1, "*fp32", False, False, 0),
                                            (2, "*i16", True, True, 2), (2, "*fp16", False, True, 1),
                                            (2, "*fp64", True, True, 3)):
            yield (f"int8_gemm/{config}/epilogue{epi}/out{kind}", int8.int8_gemm_kernel,
                   {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": out, "a_absmax_ptr": "*fp32", "b_absmax_ptr": "*fp32",
                    "extra_ptr": "*fp32", "bias_ptr": _KIND_PTR[kind], "M": "i32", "N": "i32", "K": "i32"},
                   {"EPILOGUE": epi, "HAS_EXTRA": extra, "HAS_BIAS": bias, "OUT_KIND": kind, "BIAS_KIND": kind,
                    "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                   {"num_warps": warps, "num_stages": stages}, True, False)
    block_args = {"code_ptr": "*fp32", "mid_ptr": "*fp32", "q_ptr": "*u8", "absmax_ptr": "*fp32", "start": "i32",
                  "width": "i32", "block0": "i32", "zero_index": "i32", "seed": "i32", "first": "i64"}
    for kind in (0, 1, 2):
        for sr in (False, True):
            for block in ((64, 2048, 16384) if kind == 0 else (2048,)):  # the launcher's warps for each
                yield (f"quantize_blockwise/kind{kind}/sr{int(sr)}/block{block}", blockwise.quantize_kernel,
                       {"x_ptr": _KIND_PTR[kind], **block_args}, {"KIND": kind, "STOCHASTIC": sr, "BLOCK": block},
                       {"num_warps": warps_for_block(block)}, False, False)
        yield (f"dequantize_blockwise/kind{kind}", blockwise.dequantize_kernel,
               {"q_ptr": "*u8", "absmax_ptr": "*fp32", "code_ptr": "*fp32", "out_ptr": _KIND_PTR[kind], "n": "i32",
                "blocksize": "i32"}, {"KIND": kind, "BLOCK": 1024}, {}, False, False)
    rules = [("adam", 2, (False, True, False), 2, 0), ("adam", 2, (False, True, False), 1, 2),
             ("lamb", 2, (False, True, False), 0, 0), ("momentum", 1, (False,) * 3, 1, 0),
             ("momentum", 0, (False,) * 3, 0, 0), ("rmsprop", 1, (True, False, False), 0, 0),
             ("adagrad", 1, (True, False, False), 0, 0), ("lion", 1, (False,) * 3, 2, 0),
             ("ademamix", 3, (False, False, True), 2, 0)]
    for rule, k, sr, wd, p_kind in rules:
        for eight, norm in [(True, False), (False, False)] + ([(True, True)] if rule == "lamb" else []):
            sig = {"p_ptr": _KIND_PTR[p_kind], "g_ptr": _KIND_PTR[p_kind]}
            for i in range(3):
                sig[f"s{i}"] = ("*u8" if eight else "*fp32") if i < k else _KIND_PTR[p_kind]
            for prefix in ("a", "c", "m"):
                for i in range(3):
                    sig[f"{prefix}{i}"] = "*fp32" if (eight and i < k) else _KIND_PTR[p_kind]
            for name in ("z0", "z1", "z2", "seed0", "seed1", "seed2"):
                sig[name] = "i32"
            sig.update({"norm_ptr": "*fp32", "skip_ptr": "*i64", "start": "i32", "width": "i32", "block0": "i32"})
            sig.update({f: "fp32" for f in FIELDS})
            cx = {"RULE": optimizer.RULE_IDS[rule], "NSTATES": k, "EIGHT": eight, "WD_MODE": wd,
                  "SR0": sr[0] and eight, "SR1": sr[1] and eight, "SR2": sr[2] and eight, "P_KIND": p_kind,
                  "G_KIND": p_kind, "NORM": norm, "SKIP": not norm, "BLOCK": 2048}  # skip_block: the default
            blocks = (2048, 16384) if (eight and not norm and rule in ("adam", "ademamix")) else (2048,)
            for block in blocks:
                yield (f"optimizer/{rule}/states{k}/{'8bit' if eight else '32bit'}/wd{wd}/p{p_kind}"
                       f"{'/norm' if norm else ''}/block{block}", optimizer.optimizer_kernel, sig,
                       {**cx, "BLOCK": block}, {"num_warps": warps_for_block(block)}, False, wd == 1)


def compile_all(capability: int) -> list[dict]:
    """Compile every case for ``sm_<capability>``; one dict per case: name, ok, error, int8_mma, approx, fma."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    target = GPUTarget("cuda", capability, 32)
    results = []
    for name, kernel, sig, constexprs, options, wants_mma, may_fma in _cases():
        full = {p.name: ("constexpr" if p.is_constexpr else sig[p.name]) for p in kernel.params}
        row = {"name": name, "ok": False, "error": None, "int8_mma": [], "approx": [], "fma": 0, "rne": None,
               "wants_int8_mma": wants_mma, "may_fma": may_fma}
        try:
            src = ASTSource(fn=kernel, signature=full, constexprs=constexprs)
            ptx = triton.compile(src, target=target, options={**options, "enable_fp_fusion": False}).asm["ptx"]
        except Exception as e:  # reported, and the test fails on it
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            results.append(row)
            continue
        row.update(ok=True, int8_mma=sorted(set(INT8_MMA.findall(ptx))), approx=sorted(set(APPROX.findall(ptx))),
                   fma=len(FMA32.findall(ptx)), rne=("0f4B400000" in ptx) if name.startswith("row_quant") else None)
        results.append(row)
    return results


if __name__ == "__main__":
    caps = [int(c) for c in sys.argv[1:]] or [90, 80]
    for cap in caps:
        for row in compile_all(cap):
            print(json.dumps({"capability": cap, **row}))
