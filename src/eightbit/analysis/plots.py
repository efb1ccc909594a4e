"""PNG plots of analysis results (matplotlib is imported here only, with the non-interactive Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .outliers import OutlierReport


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'eightbit[plot]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_outlier_report(report: "OutlierReport", path: str | os.PathLike) -> Path:
    """Three panels: outlier dimensions per layer, largest |input| per layer (log scale, threshold line),
    and a layer x dimension map of the emergent/most affected dimensions' magnitudes. Returns ``path``."""
    plt = _pyplot()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end with .png, got {str(path)!r}")
    layers = report.layers
    x = list(range(len(layers)))
    hidden = [layer.in_features == report.hidden_size for layer in layers]
    colors = ["tab:blue" if h else "tab:gray" for h in hidden]
    stats = report.dim_stats()[:12]

    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.35 * len(layers)), 10), constrained_layout=True)
    axes[0].bar(x, [len(layer.outlier_dims()) for layer in layers], color=colors)
    axes[0].set_ylabel(f"dims with |x| >= {report.threshold:g}")
    axes[0].set_title(f"Outlier features per linear layer input (gray: width != hidden size {report.hidden_size})")
    axes[1].bar(x, [max(float(layer.max_abs.max()), 1e-3) for layer in layers], color=colors)
    axes[1].axhline(report.threshold, color="tab:red", linestyle="--", label=f"threshold {report.threshold:g}")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("max |x|")
    axes[1].legend(loc="upper right")
    for ax in axes[:2]:
        ax.set_xticks(x)
        ax.set_xticklabels([layer.name for layer in layers], rotation=90, fontsize=6)
        ax.set_xlim(-0.5, len(layers) - 0.5)

    hl = report.hidden_layers
    if stats and hl:
        import numpy as np

        grid = np.array([[float(layer.max_abs[s.dim]) for layer in hl] for s in stats])  # (dims, layers)
        im = axes[2].imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
        axes[2].set_yticks(range(len(stats)))
        axes[2].set_yticklabels([f"dim {s.dim}{' *' if s.emergent else ''}" for s in stats], fontsize=7)
        axes[2].set_xticks(range(len(hl)))
        axes[2].set_xticklabels([layer.name for layer in hl], rotation=90, fontsize=6)
        axes[2].set_title("max |x| of the most affected hidden dimensions (* = emergent)")
        fig.colorbar(im, ax=axes[2])
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, f"no hidden dimension reaches |x| >= {report.threshold:g}", ha="center", va="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
