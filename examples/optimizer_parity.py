"""Train the tiny synthetic-grammar LM (eightbit.models.parity) with each 8-bit optimizer and its 32-bit
counterpart; write a PNG of the loss curves and a markdown table.

    python examples/optimizer_parity.py --steps 300 --out optimizer_parity
"""
from __future__ import annotations

import argparse
import pathlib
import time

from eightbit.models.parity import PARITY_CASES as CASES
from eightbit.models.parity import tail_mean, train_lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="optimizer_parity")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["| optimizer | 32-bit reference | final loss 8-bit | final loss 32-bit | rel. diff | s 8-bit | s 32-bit |",
            "|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    for ax, (name, (cls8, ref, kw)) in zip(axes.flat, CASES.items()):
        t0 = time.perf_counter()
        l8 = train_lm(lambda p: cls8(p, **kw), steps=args.steps)
        t1 = time.perf_counter()
        l32 = train_lm(lambda p: ref(p, **kw), steps=args.steps)
        t2 = time.perf_counter()
        a, b = tail_mean(l8), tail_mean(l32)
        rows.append(f"| {cls8.__name__} | {ref.__module__.split('.')[0]}.{ref.__name__} | {a:.4f} | {b:.4f} | "
                    f"{(a - b) / b:+.2%} | {t1 - t0:.1f} | {t2 - t1:.1f} |")
        ax.plot(l32, label="32-bit", lw=1)
        ax.plot(l8, label="8-bit", lw=1, ls="--")
        ax.set_title(name)
        ax.set_yscale("log")
        ax.legend()
        print(rows[-1], flush=True)
    fig.suptitle(f"Tiny LM on a synthetic grammar, {args.steps} steps (final loss = mean of last 20)")
    fig.tight_layout()
    out = pathlib.Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=100)
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
