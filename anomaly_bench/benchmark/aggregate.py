"""Aggregate the tidy results table: per-category pivot, per-dataset mean, mean ± std over seeds,
rank per metric. Pure pandas functions on the long table so they are easy to test by hand."""

from __future__ import annotations

import pandas as pd

GROUP = ["model", "dataset", "setting"]
RATE_WORDS = ("auroc", "aupr", "_ap", "aupro", "auspro", "f1", "accuracy", "iou", "dice")
LOWER_IS_BETTER_WORDS = ("latency", "time", "memory", "_s", "_ms", "params", "flops")


def is_rate_metric(metric: str) -> bool:
    """AUROC/AP/PRO-like metrics: a number in [0, 1] (or percent), higher is better."""
    low = metric.lower()
    return any(w in low for w in RATE_WORDS) or low.endswith("ap")


def higher_is_better(metric: str) -> bool:
    low = metric.lower()
    return is_rate_metric(low) or not any(w in low for w in LOWER_IS_BETTER_WORDS)


def to_percent(df: pd.DataFrame, value_col: str = "value") -> pd.DataFrame:
    """Express rate metrics in percent, as the papers do. A metric whose values all lie in [0, 1]
    is taken to be a fraction and multiplied by 100; anything else is left alone."""
    out = df.copy()
    if out.empty:
        return out
    for metric, idx in out.groupby("metric").groups.items():
        values = out.loc[idx, value_col]
        if is_rate_metric(str(metric)) and values.between(0.0, 1.0).all():
            out.loc[idx, value_col] = values * 100.0
    return out


def per_category_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (dataset, setting, category, metric), one column per model: the mean over seeds."""
    if df.empty:
        return pd.DataFrame()
    table = df.pivot_table(index=["dataset", "setting", "category", "metric"], columns="model",
                           values="value", aggfunc="mean")
    table.columns.name = None
    return table.reset_index()


def dataset_mean(df: pd.DataFrame) -> pd.DataFrame:
    """Class-average per (model, dataset, setting, seed, metric): the mean over the category rows.
    A cell that only reported a 'mean' row (no per-category rows) keeps that row."""
    if df.empty:
        return df.assign(n_categories=pd.Series(dtype=int))
    keys = [*GROUP, "seed", "metric"]
    per_cat = df[df["category"] != "mean"]
    means = per_cat.groupby(keys, as_index=False).agg(value=("value", "mean"), n_categories=("value", "size"))
    only_mean = df[df["category"] == "mean"].merge(means[keys], on=keys, how="left", indicator=True)
    only_mean = only_mean[only_mean["_merge"] == "left_only"][[*keys, "value"]].assign(n_categories=1)
    return pd.concat([means, only_mean], ignore_index=True).sort_values(keys).reset_index(drop=True)


def seed_stats(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed) and number of seeds per group."""
    by = by or [*GROUP, "metric"]
    if df.empty:
        return pd.DataFrame(columns=[*by, "mean", "std", "n_seeds"])
    grouped = df.groupby(by, as_index=False)["value"]
    stats = grouped.agg(mean="mean", std="std", n_seeds="count")
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def ranks(stats: pd.DataFrame) -> pd.DataFrame:
    """Rank of each model per (dataset, setting, metric) by its seed-mean (1 = best; ties share
    the best rank), plus the average rank over metrics as metric ``mean_rank``."""
    if stats.empty:
        return pd.DataFrame(columns=["dataset", "setting", "metric", "model", "mean", "rank"])
    parts = []
    for (dataset, setting, metric), group in stats.groupby(["dataset", "setting", "metric"]):
        ascending = not higher_is_better(str(metric))
        g = group[["model", "mean"]].copy()
        g["rank"] = g["mean"].rank(ascending=ascending, method="min")
        g["dataset"], g["setting"], g["metric"] = dataset, setting, metric
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    avg = out.groupby(["dataset", "setting", "model"], as_index=False)["rank"].mean()
    avg["metric"], avg["mean"] = "mean_rank", float("nan")
    out = pd.concat([out, avg], ignore_index=True)
    return out[["dataset", "setting", "metric", "model", "mean", "rank"]]


def format_mean_std(mean: float, std: float, n: int, digits: int = 1) -> str:
    if pd.isna(mean):
        return "-"
    if n <= 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(stats: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Wide, human table: rows (dataset, setting, model), one column per metric, 'mean ± std'."""
    if stats.empty:
        return pd.DataFrame()
    s = stats.copy()
    s["cell"] = [format_mean_std(m, sd, n, digits) for m, sd, n in zip(s["mean"], s["std"], s["n_seeds"])]
    wide = s.pivot_table(index=["dataset", "setting", "model"], columns="metric", values="cell", aggfunc="first")
    wide.columns.name = None
    ordered = sorted(wide.columns, key=metric_order)
    return wide[ordered].reset_index()


METRIC_ORDER = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1")


def metric_order(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)
