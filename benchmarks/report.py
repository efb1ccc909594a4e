"""Markdown tables (stdout, BENCHMARKS.md) from the result JSON."""
from __future__ import annotations

from typing import Any


def _num(v: float | None, fmt: str = "{:.3g}") -> str:
    return "" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _notes(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"**{r['status']}**: {r['reason']}".replace("|", "/")
    e = r["extra"]
    parts = []
    if "state_bytes" in e:
        parts.append(f"state {e['state_bytes'] / 2**20:.1f} MiB ({e['state_bytes_per_param']:.2f} B/param)")
    if "second_call_ms" in e:
        parts.append(f"2nd call {e['second_call_ms']:.1f} ms; eightbit import {e['eightbit_import_s'] or 0:.1f} s; "
                     f"process {e['process_wall_s']:.1f} s; {e['cache']}")
    return "; ".join(parts)


def results_table(rows: list[dict[str, Any]]) -> str:
    head = ("| case | config | implementation | median ms | p10-p90 ms | GB/s | rel. error | floor ms | x floor | notes |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        spread = f"{_ms(r['p10_ms'])}-{_ms(r['p90_ms'])}" if r["status"] == "ok" else ""
        lines.append(
            f"| {r['case']} | {r['config']} | {r['impl']} | {_ms(r['median_ms'])} | {spread} | "
            f"{_num(r['gbps'], '{:.2f}')} | {_num(r['rel_error'], '{:.2e}')} | {_ms(r['floor_ms'])} | "
            f"{_num(r['x_floor'], '{:.1f}')} | {_notes(r)} |"
        )
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | limit | result |", "|---|---:|---:|---|"]
    for t in targets:
        unit = "x" if t["unit"] == "x" else f" {t['unit']}"
        measured = "n/a" if t["measured"] is None else f"{t['measured']:.3g}{unit}"
        result = "n/a (not measured or unavailable)" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"| {t['target']} | {measured} | {t['op']} {t['limit']:g}{unit} | {result} |")
    return "\n".join(lines)


def machine_text(result: dict[str, Any]) -> str:
    m, f = result["machine"], result["floors"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    vers = ", ".join(f"{k} {v or 'missing'}" for k, v in m["versions"].items())
    load = lambda la: "n/a" if not la else "/".join(f"{x:.2f}" for x in la)  # noqa: E731
    return "\n".join([
        f"- CPU: {m['cpu_model']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}, "
        f"torch CPU capability {m['torch_cpu_capability']}, {m.get('mem_total_gib')} GiB RAM",
        f"- Flags: {flags}",
        f"- Versions: python {m['python']}, {vers}",
        f"- Measured floors: copy bandwidth {_num(f['bandwidth_gbps'], '{:.1f}')} GB/s (read+write), "
        f"fp32 GEMM {_num(f['fp32_gflops'], '{:.0f}')} GFLOP/s",
        f"- One core's ceilings (benchmarks/csrc/probes.c, data in L1): int8 products "
        f"{_num(f.get('int8_exact_gmacs'), '{:.0f}')} G/s with eightbit's exact AVX2 step, "
        f"{_num(f.get('int8_saturating_gmacs'), '{:.0f}')} G/s with the saturating u8s8 step of MLAS/ONNX Runtime; "
        f"table gathers {_num(f.get('gather_glanes'), '{:.2f}')} G lanes/s, float32 divisions "
        f"{_num(f.get('divide_glanes'), '{:.2f}')} G lanes/s",
        f"- Load average (1/5/15 min) at start {load(m.get('loadavg_start'))}, at end {load(m.get('loadavg_end'))}",
    ])


def render(result: dict[str, Any]) -> str:
    """The whole report as markdown."""
    return "\n\n".join([
        f"## eightbit benchmarks ({'quick' if result['quick'] else 'full'} run, {result['duration_s']:.0f} s)",
        machine_text(result),
        "### Results\n\n" + results_table(result["rows"]),
        "### Targets\n\n" + targets_table(result["targets"]),
    ]) + "\n"
