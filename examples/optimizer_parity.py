"""Train the tiny synthetic-grammar LM (tests/optim/tasks.py) with each 8-bit optimizer and its 32-bit
counterpart; write a PNG of the loss curves and a markdown table.

    python examples/optimizer_parity.py --steps 300 --out optimizer_parity
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.optim.tasks

import eightbit.optim as O  # noqa: E402
from tests.optim.tasks import tail_mean, train_lm  # noqa: E402

CASES = {
    "Adam": (O.Adam8bit, torch.optim.Adam, dict(lr=3e-3)),
    "AdamW": (O.AdamW8bit, torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.05)),
    "SGD": (O.SGD8bit, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "RMSprop": (O.RMSprop8bit, torch.optim.RMSprop, dict(lr=1e-3)),
    "Adagrad": (O.Adagrad8bit, torch.optim.Adagrad, dict(lr=0.03)),
    "LAMB": (O.LAMB8bit, O.LAMB32bit, dict(lr=1e-2, weight_decay=0.01)),
    "LARS": (O.LARS8bit, O.LARS32bit, dict(lr=0.1, momentum=0.9)),
    "Lion": (O.Lion8bit, O.Lion32bit, dict(lr=1e-3, weight_decay=0.01)),
}


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
