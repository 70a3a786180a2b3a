"""Aggregation on a hand-made results table, and reading metric files of several shapes."""

import math

import pandas as pd
import pytest

from anomaly_bench.benchmark.aggregate import (
    dataset_mean,
    format_mean_std,
    per_category_pivot,
    ranks,
    seed_stats,
    summary_table,
    to_percent,
)
from anomaly_bench.benchmark.results import read_metrics_csv


def _table() -> pd.DataFrame:
    rows = []
    # model A: categories x, y; seeds 0, 1
    for seed, (x, y) in {0: (0.90, 0.80), 1: (0.94, 0.84)}.items():
        rows += [("A", "D", "unified", "x", seed, "image_auroc", x), ("A", "D", "unified", "y", seed, "image_auroc", y)]
    # model B: one seed, better
    rows += [("B", "D", "unified", "x", 0, "image_auroc", 0.95), ("B", "D", "unified", "y", 0, "image_auroc", 0.91)]
    # a latency-like metric where lower is better, not a fraction
    rows += [("A", "D", "unified", "mean", 0, "latency_ms", 5.0), ("B", "D", "unified", "mean", 0, "latency_ms", 9.0)]
    return pd.DataFrame(rows, columns=["model", "dataset", "setting", "category", "seed", "metric", "value"])


def test_to_percent_scales_only_fraction_rate_metrics():
    pct = to_percent(_table())
    assert pct.loc[pct.metric == "image_auroc", "value"].tolist()[0] == pytest.approx(90.0)
    assert pct.loc[pct.metric == "latency_ms", "value"].tolist() == [5.0, 9.0]
    already = _table().assign(value=lambda d: d.value * 100)
    assert to_percent(already)["value"].tolist() == already["value"].tolist()


def test_dataset_mean_and_seed_stats_known_answers():
    per_seed = dataset_mean(to_percent(_table()))
    a = per_seed[(per_seed.model == "A") & (per_seed.metric == "image_auroc")].sort_values("seed")
    assert a["value"].tolist() == pytest.approx([85.0, 89.0])
    assert a["n_categories"].tolist() == [2, 2]
    # a cell that only reported a 'mean' row keeps it
    assert per_seed[(per_seed.model == "B") & (per_seed.metric == "latency_ms")]["value"].item() == 9.0
    stats = seed_stats(per_seed).set_index(["model", "metric"])
    assert stats.loc[("A", "image_auroc"), "mean"] == pytest.approx(87.0)
    assert stats.loc[("A", "image_auroc"), "std"] == pytest.approx(math.sqrt(8.0))  # sample std of 85, 89
    assert stats.loc[("A", "image_auroc"), "n_seeds"] == 2
    assert stats.loc[("B", "image_auroc"), "mean"] == pytest.approx(93.0)
    assert stats.loc[("B", "image_auroc"), "std"] == 0.0


def test_ranks_respect_metric_direction():
    r = ranks(seed_stats(dataset_mean(to_percent(_table())))).set_index(["metric", "model"])["rank"]
    assert r[("image_auroc", "B")] == 1 and r[("image_auroc", "A")] == 2
    assert r[("latency_ms", "A")] == 1 and r[("latency_ms", "B")] == 2  # lower latency is better
    assert r[("mean_rank", "A")] == pytest.approx(1.5)


def test_per_category_pivot_and_summary_strings():
    pivot = per_category_pivot(to_percent(_table())).set_index(["category", "metric"])
    assert pivot.loc[("x", "image_auroc"), "A"] == pytest.approx(92.0)
    assert pivot.loc[("y", "image_auroc"), "B"] == pytest.approx(91.0)
    summary = summary_table(seed_stats(dataset_mean(to_percent(_table())))).set_index("model")
    assert summary.loc["A", "image_auroc"] == "87.0 ± 2.8"
    assert summary.loc["B", "image_auroc"] == "93.0"
    assert format_mean_std(float("nan"), 0.0, 0) == "-"


def test_read_metrics_csv_with_mean_row_and_bookkeeping(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("category,image_auroc,pixel_aupro,n_images,pixel_aupro_fpr_limit\n"
                    "bottle,0.9,0.8,10,0.3\nmean,0.9,0.8,10,0.3\n")
    rows = read_metrics_csv(path)
    assert ("bottle", "image_auroc", 0.9) in rows and ("mean", "pixel_aupro", 0.8) in rows
    assert not any(m in ("n_images", "pixel_aupro_fpr_limit") for _, m, _ in rows)
