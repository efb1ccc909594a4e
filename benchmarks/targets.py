"""The performance issue's target ratios, checked against measured rows."""
from __future__ import annotations

from typing import Any

from .common import Row, paired_ratio

EB_LINEAR = "eightbit Linear8bitLt"
EB_LINEAR_OUTLIERS = "eightbit Linear8bitLt, 0.1% outliers"
ORT = "onnxruntime dynamic int8"


def _find(rows: list[Row], case: str, impl: str, config: str | None = None) -> Row | None:
    for r in rows:
        if r.case == case and r.impl == impl and r.status == "ok" and (config is None or r.config == config):
            return r
    return None


def _target(name: str, num: float | None, den: float | None, op: str, limit: float, unit: str = "x") -> dict[str, Any]:
    measured = None if num is None or den is None or den == 0 else num / den
    ok = None if measured is None else (measured <= limit if op == "<=" else measured >= limit)
    return {"target": name, "measured": measured, "op": op, "limit": limit, "unit": unit, "pass": ok}


def evaluate(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per target: measured value, limit, pass (None when a side of the ratio is missing)."""
    out = []
    configs = sorted({r.config for r in rows if r.case == "linear"}, key=lambda c: int(c.rsplit("=", 1)[-1]))
    for cfg in configs:
        eb, ort, ebo = (_find(rows, "linear", n, cfg) for n in (EB_LINEAR, ORT, EB_LINEAR_OUTLIERS))
        m = cfg.rsplit(", ", 1)[-1]
        out.append(_target(f"Linear8bitLt time / ONNX Runtime int8 time, {m}",
                           eb and eb.median_ms, ort and ort.median_ms, "<=", 1.0))
        out.append(_target(f"Linear8bitLt with 0.1% outliers / without, {m}",
                           ebo and ebo.median_ms, eb and eb.median_ms, "<=", 1.15))
    eb, fused, tao, bnb = (_find(rows, "optim", n) for n in (
        "eightbit AdamW8bit", "torch AdamW fused", "torchao AdamW8bit", "bitsandbytes AdamW8bit"))
    t = lambda r: r and r.median_ms  # noqa: E731
    out.append(_target("AdamW8bit step time / torch AdamW(fused=True)", t(eb), t(fused), "<=", 1.0))
    out.append(_target("AdamW8bit / torch AdamW(fused=True), median of per-round ratios",
                       eb and fused and paired_ratio(eb, fused), 1.0, "<=", 1.0))
    out.append(_target("AdamW8bit step time / torchao AdamW8bit", t(eb), t(tao), "<=", 0.7))
    out.append(_target("bitsandbytes AdamW8bit (CPU) time / AdamW8bit (speed-up)", t(bnb), t(eb), ">=", 15.0))
    sb = lambda r: r and r.extra.get("state_bytes")  # noqa: E731
    out.append(_target("AdamW8bit state bytes / torch AdamW state bytes", sb(eb), sb(fused), "<=", 0.27))
    eb, bnb = _find(rows, "blockwise", "eightbit quantize_blockwise"), _find(rows, "blockwise", "bitsandbytes quantize_blockwise")
    g = lambda r: r and r.gbps  # noqa: E731
    out.append(_target("blockwise quantize+dequantize GB/s / bitsandbytes", g(eb), g(bnb), ">=", 10.0))
    eb, tc = _find(rows, "fp8", "eightbit quantize_fp8"), _find(rows, "fp8", "torch float8_e4m3fn cast")
    out.append(_target("fp8 e4m3 quantize+dequantize GB/s / torch cast", g(eb), g(tc), ">=", 10.0))
    out.append(_target("fp8 e4m3 quantize+dequantize throughput", g(eb), 1.0, ">=", 5.0, unit="GB/s"))
    for batch in ("1", "64"):  # issue 18: both batch sizes of the end-to-end section
        cfg = next((r.config for r in rows if r.case == "models" and r.config.startswith(f"MiniLM, batch {batch} ")),
                   None)
        eb, tao = (_find(rows, "models", n, cfg) for n in ("eightbit LLM.int8() t=6", "torch.ao dynamic int8"))
        out.append(_target(f"MiniLM batch {batch}, LLM.int8() time / torch.ao dynamic int8", t(eb), t(tao), "<=", 1.0))
        out.append(_target(f"MiniLM batch {batch}, LLM.int8() / torch.ao, median of per-round ratios",
                           eb and tao and paired_ratio(eb, tao), 1.0, "<=", 1.0))
    minilm = next((r.config for r in rows if r.case == "models" and r.config.startswith("MiniLM, batch 64 ")), None)
    eb, fp32 = (_find(rows, "models", n, minilm) for n in ("eightbit LLM.int8() t=6", "torch fp32"))
    out.append(_target("MiniLM batch 64, LLM.int8() time / fp32", t(eb), t(fp32), "<=", 0.6))
    out.append(_target("MiniLM batch 64, LLM.int8() worst sentence cosine vs float64",
                       eb and eb.extra.get("cosine_min"), 1.0, ">=", 0.999, unit=""))
    for regime in ("hot", "cold"):  # batch-1 decode (issue 19): M = 1 against ONNX Runtime, and the read floor
        cfg = next((r.config for r in rows if r.case == "decode" and f", {regime}, " in r.config
                    and r.config.endswith(", M=1")), None)
        eb, ort = (_find(rows, "decode", n, cfg) for n in (EB_LINEAR, ORT))
        out.append(_target(f"decode M=1 {regime}, Linear8bitLt time / ONNX Runtime int8", t(eb), t(ort), "<=", 1.0))
        if regime == "cold":
            out.append(_target("decode M=1 cold, Linear8bitLt time / read-only bandwidth floor", eb and eb.x_floor,
                               1.0, "<=", 1.25))
    fp32 = _find(rows, "load", "transformers fp32 load, every weight read")
    for name in ("eightbit from_pretrained LLM.int8()", "eightbit from_pretrained_streaming LLM.int8()"):
        out.append(_target(f"MiniLM {name.split(' ', 1)[1]} time / fp32 load reading every weight",
                           t(_find(rows, "load", name)), t(fp32), "<=", 1.5))
    return out
