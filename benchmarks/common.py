"""Timing and bookkeeping shared by every case: implementations, interleaved measurement, result rows.

A case describes each implementation as an `Impl` whose ``build()`` prepares everything outside the timed
region (quantized weights, optimizer, inputs) and returns a `Built`: the callable to time plus its accuracy.
`measure` then times all built implementations of one configuration round-robin, so that drift in machine
load (other processes, frequency changes) hits every implementation alike.
"""
from __future__ import annotations

import gc
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch


class Unavailable(Exception):
    """Raised by a builder when a peer library or an eightbit implementation is missing here."""


@dataclass
class Built:
    """A ready-to-time implementation: ``fn()`` is the timed call; ``rel_error`` its accuracy vs float64."""

    fn: Callable[[], Any]
    rel_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Impl:
    """One implementation of a case configuration; ``build()`` raises `Unavailable` (or ImportError)
    when it cannot run here."""

    name: str
    build: Callable[[], Built]


@dataclass
class Row:
    """One line of a result table (JSON-serializable through `asdict`). Times are per call, in ms."""

    case: str
    config: str
    impl: str
    status: str  # "ok" | "unavailable" | "error"
    reason: str = ""
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    samples: int = 0
    calls_per_sample: int = 0
    gbps: float | None = None
    rel_error: float | None = None
    floor_ms: float | None = None
    x_floor: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """Run-wide settings handed to every case."""

    quick: bool
    bandwidth_gbps: float | None = None  # measured copy bandwidth, bytes read + written per second / 1e9
    fp32_gflops: float | None = None  # measured big fp32 GEMM
    int8_exact_gmacs: float | None = None  # one core's exact int8 products per second / 1e9 (probes.c)

    @property
    def repeats(self) -> int:
        return 3 if self.quick else 15

    @property
    def warmup(self) -> int:
        return 0 if self.quick else 2

    @property
    def sample_s(self) -> float:
        """Target duration of one timed sample (fast calls are looped to reach it)."""
        return 0.004 if self.quick else 0.02

    @property
    def budget_s(self) -> float:
        """Time budget per implementation and configuration; slow peers get fewer repeats (at least 3)."""
        return 1.0 if self.quick else 30.0


def log(msg: str) -> None:
    """Progress on stderr, so that stdout stays the result tables."""
    print(msg, file=sys.stderr, flush=True)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (inf when ``out`` holds NaN/Inf)."""
    diff = out.detach().to(torch.float64) - ref.to(torch.float64)
    num = torch.linalg.vector_norm(diff).item()
    den = torch.linalg.vector_norm(ref.to(torch.float64)).item()
    if not math.isfinite(num):
        return math.inf
    return num / den if den > 0 else num


def describe_exception(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return text[:160]


def _unavailable(e: BaseException) -> bool:
    # A missing module/attribute means "not written yet" or "peer not installed", not a bug in the peer.
    return isinstance(e, (Unavailable, ImportError, AttributeError, NotImplementedError))


def build_all(case: str, config: str, impls: list[Impl]) -> tuple[list[tuple[Impl, Built]], list[Row]]:
    """Build every implementation; failures become unavailable/error rows instead of exceptions."""
    built, failed = [], []
    for impl in impls:
        try:
            built.append((impl, impl.build()))
        except Exception as e:  # noqa: BLE001 - a benchmark must survive any peer's failure
            status = "unavailable" if _unavailable(e) else "error"
            failed.append(Row(case, config, impl.name, status, reason=describe_exception(e)))
            log(f"  {case}/{config}/{impl.name}: {status}: {describe_exception(e)}")
    return built, failed


def _time_calls(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def paired_ratio(a: Row, b: Row) -> float | None:
    """Median over the rounds both rows were timed in of a's sample time / b's: within a round the two ran seconds
    apart, so a drift of the machine's speed between rounds (a shared VM's) cancels, which the ratio of the two
    medians does not. None without common rounds."""
    times_b = {rnd: t for rnd, t in b.extra.get("round_ms", [])}
    ratios = [t / times_b[rnd] for rnd, t in a.extra.get("round_ms", []) if times_b.get(rnd)]
    return _percentile(ratios, 50) if ratios else None


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(
    ctx: Context,
    case: str,
    config: str,
    impls: list[Impl],
    *,
    bytes_per_call: float | None = None,
    floor_s: float | None = None,
) -> list[Row]:
    """Build and time every implementation of one configuration, interleaved: one sample of each per round.

    Each sample loops a fast call enough times to last about ``ctx.sample_s``; every round runs the implementations
    in a new (seeded) random order, so that none always runs first or always right after the same other one: under a
    rotation each one always followed the same predecessor, and at MiniLM batch 1 whichever row ran right after
    ONNX Runtime measured 10-25 % slower (LLM.int8() t=6 when it followed, t=0 when the two were swapped).
    ``bytes_per_call`` adds a GB/s column (input bytes / median time); ``floor_s`` adds the physical floor and the
    ratio median / floor.
    """
    log(f"[{case}] {config}")
    built, rows = build_all(case, config, impls)
    plans: list[dict[str, Any]] = []
    for impl, b in built:
        try:
            gc.collect()
            t1 = _time_calls(b.fn, 1)  # the build already ran fn once (accuracy check), so this is warm
            calls = max(1, min(1000, math.ceil(ctx.sample_s / max(t1, 1e-7))))
            sample_t = t1 * calls
            reps = ctx.repeats if sample_t * ctx.repeats <= ctx.budget_s else max(3, int(ctx.budget_s / sample_t))
            # the build call and the calibration call t1 already warmed it up; fast calls get extra warm-up samples
            warm = ctx.warmup if sample_t < 1.0 else 0
            plans.append(dict(impl=impl, built=b, calls=calls, reps=reps, warm=warm, times=[], rounds=[], error=None))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(case, config, impl.name, "error", reason=describe_exception(e)))
    rounds = max([p["warm"] + p["reps"] for p in plans], default=0)
    rng = random.Random(0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            order = rng.sample(plans, len(plans))
            for p in order:
                if p["error"] is not None or r >= p["warm"] + p["reps"]:
                    continue
                try:
                    t = _time_calls(p["built"].fn, p["calls"])
                except Exception as e:  # noqa: BLE001
                    p["error"] = describe_exception(e)
                    continue
                if r >= p["warm"]:
                    p["times"].append(t)
                    p["rounds"].append(r)
    finally:
        if gc_was_enabled:
            gc.enable()
    for p in plans:
        name, b = p["impl"].name, p["built"]
        if p["error"] is not None or not p["times"]:
            rows.append(Row(case, config, name, "error", reason=p["error"] or "no samples"))
            continue
        med = _percentile(p["times"], 50)
        row = Row(
            case, config, name, "ok",
            median_ms=med * 1e3, p10_ms=_percentile(p["times"], 10) * 1e3, p90_ms=_percentile(p["times"], 90) * 1e3,
            samples=len(p["times"]), calls_per_sample=p["calls"], rel_error=b.rel_error, extra=dict(b.extra),
        )
        # each sample with its round, so that two implementations can be compared round by round (paired_ratio)
        row.extra["round_ms"] = [[rnd, t * 1e3] for rnd, t in zip(p["rounds"], p["times"])]
        if bytes_per_call is not None:
            row.gbps = bytes_per_call / med / 1e9
        if floor_s is not None:
            row.floor_ms = floor_s * 1e3
            row.x_floor = med / floor_s
        rows.append(row)
    order_names = [i.name for i in impls]
    rows.sort(key=lambda x: order_names.index(x.impl) if x.impl in order_names else len(order_names))
    return rows
