"""Per-category ROC / PR / PRO curves as W&B line plots (bounded points), never failing a run.

Each category gets three plots under ``test/curves/<category>/``: ``roc`` (image and pixel),
``pr`` (image and pixel) and ``pro`` (pixel PRO, plus sPRO per LOCO subset). Exact curves can have
millions of points; each series is thinned to ``max_points`` evenly spaced points, endpoints kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.plots import thin
from anomaly_bench.metrics.report import CategoryResult

DEFAULT_MAX_POINTS = 200

Series = tuple[str, np.ndarray, np.ndarray]  # name, x, y


def _two_classes(curves: RankingCurves | None) -> bool:
    return bool(curves is not None and curves.points.total_positives and curves.points.total_negatives)


def category_series(result: CategoryResult) -> dict[str, tuple[str, list[Series]]]:
    """Plot name -> (x axis name, series) of one category; empty series are left out.

    Args:
        result: one category's result (``report.category_result``).
    """
    image, overall = result.image_curves, result.pixel_curves.get("all")
    roc: list[Series] = []
    pr: list[Series] = []
    pro: list[Series] = []
    for name, curves in (("image", image), ("pixel", overall)):
        if _two_classes(curves):
            roc.append((name, curves.fpr(), curves.tpr()))
            pr.append((name, curves.tpr()[1:], curves.precision()[1:]))
    if _two_classes(overall) and overall.num_regions:
        pro.append(("PRO", np.minimum(overall.fpr(), 1.0), overall.pro()))
    for subset, curves in result.pixel_curves.items():
        if curves.num_channels and _two_classes(curves):
            pro.append((f"sPRO {subset}", np.minimum(curves.fpr(), 1.0), curves.spro()))
    plots = {"roc": ("FPR", roc), "pr": ("recall", pr), "pro": ("FPR", pro)}
    return {name: plot for name, plot in plots.items() if plot[1]}


def wandb_curve_plots(results: Iterable[CategoryResult], max_points: int = DEFAULT_MAX_POINTS,
                      prefix: str = "test/curves") -> dict[str, Any]:
    """``{key: wandb line plot}`` for every category's curves.

    Args:
        results: the categories' results.
        max_points: points per series at most.
        prefix: key prefix; keys are ``<prefix>/<category>/<roc|pr|pro>``.
    """
    import wandb

    plots: dict[str, Any] = {}
    for result in results:
        category = str(result.row["category"])
        for name, (x_name, series) in category_series(result).items():
            xs, ys, keys = [], [], []
            for label, x, y in series:
                x, y = thin(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), max_points)
                keep = np.isfinite(x) & np.isfinite(y)
                xs.append(x[keep].tolist())
                ys.append(y[keep].tolist())
                keys.append(label)
            plots[f"{prefix}/{category}/{name}"] = wandb.plot.line_series(
                xs=xs, ys=ys, keys=keys, title=f"{category}: {name.upper()}", xname=x_name,
            )
    return plots


def log_wandb_curves(loggers: Sequence[Any], results: Sequence[CategoryResult],
                     max_points: int = DEFAULT_MAX_POINTS) -> list[str]:
    """Log the curves to every ``WandbLogger`` among ``loggers``; returns the keys logged.

    W&B trouble (no package, offline quirks, a rejected plot) only warns: it never fails a run.

    Args:
        loggers: the trainer's loggers.
        results: the categories' results.
        max_points: points per series at most.
    """
    try:
        from lightning.pytorch.loggers import WandbLogger
    except Exception:  # pragma: no cover - lightning without wandb support
        return []
    targets = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not targets or not results:
        return []
    try:
        plots = wandb_curve_plots(results, max_points)
    except Exception as err:  # W&B must never fail a run
        warnings.warn(f"could not build the W&B curve plots: {err}", stacklevel=2)
        return []
    for logger in targets:
        try:
            logger.experiment.log(plots)
        except Exception as err:  # W&B must never fail a run
            warnings.warn(f"could not log curves to W&B: {err}", stacklevel=2)
            return []
    return sorted(plots)
