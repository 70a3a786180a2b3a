"""Collect every cell's metrics into one tidy long table.

Columns: grid, model, dataset, setting, category, seed, metric, value, cell_id. One row per
number. A cell's ``metrics.json`` is read with ``metrics.report.read_tables``, the inverse of the
one writer (``write_tables``). A cell whose command is another tool (a custom command in the grid)
may leave only a ``metrics.csv`` with one row per category: that is read as a table.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_bench.benchmark.grid import Cell, GridConfig
from anomaly_bench.benchmark.cell_runner import find_metrics_json
from anomaly_bench.metrics.report import MetricsFileError, metric_values, read_tables

TIDY_COLUMNS = ["grid", "model", "dataset", "setting", "category", "seed", "metric", "value", "cell_id"]
MEAN_LABELS = ("mean", "average", "avg", "all")
CATEGORY_KEYS = ("category", "class", "name")


def is_bookkeeping_column(name: str) -> bool:
    """Counts and settings stored next to metrics (n_images, fpr_limit...) are not metrics."""
    low = name.lower()
    return low.startswith(("n_", "num_", "seed", "epoch", "step")) or low.endswith(("_limit", "count", "_n"))


def read_metrics_csv(path: Path) -> list[tuple[str, str, float]]:
    """(category, metric, value) from a ``metrics.csv`` with one row per category (+ mean)."""
    df = pd.read_csv(path)
    cat_col = next((c for c in df.columns if str(c).lower() in CATEGORY_KEYS), None)
    rows: list[tuple[str, str, float]] = []
    for i, record in df.iterrows():
        category = str(record[cat_col]) if cat_col is not None else ("mean" if len(df) == 1 else str(i))
        for col in df.columns:
            if col == cat_col or is_bookkeeping_column(str(col)):
                continue
            value = pd.to_numeric(record[col], errors="coerce")
            if pd.notna(value):
                rows.append((category, str(col), float(value)))
    return rows


def read_metrics_json(path: Path) -> list[tuple[str, str, float]]:
    """(category, metric, value) from a ``metrics.json`` written by ``write_tables``.

    Raises ``MetricsFileError`` (one line naming the file) for anything else.

    Args:
        path: the ``metrics.json`` file.
    """
    rows, _ = read_tables(path)
    return metric_values(rows)


def read_cell_metrics(run_dir: Path) -> list[tuple[str, str, float]]:
    """Metrics of one cell: its ``metrics.json`` (``read_tables``); a ``metrics.csv`` of another
    tool beside a JSON that ``write_tables`` did not write; nothing when neither is there."""
    json_path = find_metrics_json(run_dir)
    if json_path is None:
        return []
    try:
        return read_metrics_json(json_path)
    except MetricsFileError:
        csv_path = json_path.with_name("metrics.csv")
        if not csv_path.is_file():
            raise
    try:
        return read_metrics_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError):
        return []


def _normalise_category(label: str) -> str:
    return "mean" if label.strip().lower() in MEAN_LABELS else label.strip()


def collect_results(grid: GridConfig, cells: Sequence[Cell], cells_root: Path | None = None) -> pd.DataFrame:
    """Tidy long table of every finished cell of the grid."""
    root = cells_root or (grid.output_dir / "cells")
    records: list[dict[str, Any]] = []
    for cell in cells:
        try:
            rows = read_cell_metrics(root / cell.id)
        except MetricsFileError as err:  # one odd cell must not cost the grid's table
            warnings.warn(f"cell {cell.id} left out of the results: {err}", stacklevel=2)
            continue
        if not rows:
            continue
        categories = {_normalise_category(c) for c, _, _ in rows} - {"mean"}
        for category, metric, value in rows:
            category = _normalise_category(category)
            # A separate (one-category) cell's "mean" row repeats its only category: drop it.
            if category == "mean" and cell.setting == "separate" and len(categories) <= 1:
                if categories:
                    continue
                category = cell.category_label
            records.append({
                "grid": grid.name,
                "model": cell.model.name,
                "dataset": cell.dataset.name,
                "setting": cell.setting,
                "category": category,
                "seed": cell.seed,
                "metric": metric,
                "value": value,
                "cell_id": cell.id,
            })
    return pd.DataFrame.from_records(records, columns=TIDY_COLUMNS)
