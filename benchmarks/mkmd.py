"""Regenerate BENCHMARKS.md from a result JSON: ``python -m benchmarks.mkmd [results/latest.json] > BENCHMARKS.md``.

The tables come from the JSON; the per-target explanations are hand-written in ``benchmarks/targets_explained.md``
(update them when the numbers move)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .report import render

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> str:
    path = Path(argv[0]) if argv else HERE / "results" / "latest.json"
    r = json.loads(path.read_text())
    rows = [x for x in r["rows"] if x["status"] == "ok" and x["impl"].startswith("eightbit") and x.get("x_floor")]
    floors = "\n".join(
        f"- {x['case']} / {x['config']} / {x['impl']}: {x['median_ms']:.3g} ms vs floor {x['floor_ms']:.3g} ms "
        f"= **{x['x_floor']:.1f}x** the floor" for x in rows
    )
    la = r["machine"].get("loadavg_start") or [float("nan")] * 3
    explained = (HERE / "targets_explained.md").read_text()
    return f"""# eightbit benchmarks

Command (repository root, nothing else running): `{r['command']}` (also `eightbit bench`); started
{r.get('started_utc', '?')}, load average {la[0]:.2f} at the start. Harness: `docs/benchmarks.md`. The machine is a
shared 2-core VM: repeated full runs moved individual medians by up to 2x (the measured copy bandwidth ranged
17-25 GB/s), so read ratios, not absolute times.

{render(r)}
### Distance from the physical floor (eightbit rows)

Floors: linear = max(int8 weight bytes / copy bandwidth, M*N*K / (threads x one core's exact int8 rate from
probes.c)); optim = (12 B + 2 x state bytes) per parameter / bandwidth; blockwise =
10 B per value / bandwidth; fp8 = 14 B per value / bandwidth. A result below 1.0x means the data stayed in
the 32 MB+ L3 cache between repeats (the floor assumes DRAM).

{floors}

{explained}"""


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]))
