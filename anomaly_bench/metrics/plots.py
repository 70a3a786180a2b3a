"""ROC / PR / PRO (and sPRO) curve plots per category, written as PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from anomaly_bench.metrics.curves import RankingCurves

MAX_PLOT_POINTS = 4000


def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` evenly spaced points (first and last included): exact curves
    can have millions.

    Args:
        x: the curve's x values.
        y: its y values.
        max_points: points kept at most (>= 2).
    """
    if len(x) <= max_points:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, max(2, max_points)).round().astype(np.int64))
    return x[index], y[index]


_thin = thin


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "category"


def plot_category(
    path: str | Path,
    category: str,
    image_curves: RankingCurves | None,
    pixel_curves: dict[str, RankingCurves],
    fpr_limit: float = 0.3,
    spro_limit: float = 0.05,
) -> Path:
    """One figure: ROC (image and pixel), pixel PR, PRO up to FPR 1 (limit marked), sPRO if any."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    overall = pixel_curves.get("all")
    panels = 1 + (2 if overall is not None else 0) + (1 if overall is not None and overall.num_channels else 0)
    figure, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.8), squeeze=False)
    axes = axes[0]
    ax = axes[0]
    if image_curves is not None and image_curves.points.total_positives and image_curves.points.total_negatives:
        ax.plot(*_thin(image_curves.fpr(), image_curves.tpr()), label=f"image {image_curves.auroc():.3f}")
    if overall is not None:
        ax.plot(*_thin(overall.fpr(), overall.tpr()), label=f"pixel {overall.auroc():.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(title=f"{category}: ROC", xlabel="FPR", ylabel="TPR")
    ax.legend(loc="lower right")
    if overall is not None:
        ax = axes[1]
        ax.plot(*_thin(overall.tpr()[1:], overall.precision()[1:]), label=f"AP {overall.average_precision():.3f}")
        ax.set(title="pixel PR", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
        ax.legend(loc="upper right")
        ax = axes[2]
        ax.plot(*_thin(np.minimum(overall.fpr(), 1), overall.pro()), label=f"AU-PRO@{fpr_limit:g} {overall.aupro(fpr_limit):.3f}")
        ax.axvline(fpr_limit, ls="--", color="grey")
        ax.set(title="PRO", xlabel="FPR", ylabel="PRO", ylim=(0, 1.02))
        ax.legend(loc="lower right")
        if overall.num_channels:
            ax = axes[3]
            for name, curves in pixel_curves.items():
                if curves.num_channels:
                    ax.plot(*_thin(np.minimum(curves.fpr(), 1), curves.spro()),
                            label=f"{name} {curves.auspro(spro_limit):.3f}@{spro_limit:g}")
            ax.axvline(spro_limit, ls="--", color="grey")
            ax.set(title="sPRO", xlabel="FPR", ylabel="sPRO", xlim=(0, max(0.3, spro_limit)), ylim=(0, 1.02))
            ax.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
