"""Collect every cell's metrics into one tidy long table.

Columns: grid, model, dataset, setting, category, seed, metric, value, cell_id. One row per
number. The metric files are written by the Evaluator; we read them defensively (CSV first, JSON
as fallback) because a benchmark must report what it can rather than crash on one odd file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_bench.benchmark.grid import Cell, GridConfig
from anomaly_bench.benchmark.runner import find_metrics_json

TIDY_COLUMNS = ["grid", "model", "dataset", "setting", "category", "seed", "metric", "value", "cell_id"]
MEAN_LABELS = ("mean", "average", "avg", "all")
CATEGORY_KEYS = ("category", "class", "name")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return not math.isnan(value)
    return False


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


def _metrics_of(obj: Any) -> dict[str, float]:
    """Numeric leaves of a per-category metrics dict; ``{"value": x, ...}`` counts as x."""
    out: dict[str, float] = {}
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        if is_bookkeeping_column(str(key)) or str(key).lower() in CATEGORY_KEYS:
            continue
        if _is_number(value):
            out[str(key)] = float(value)
        elif isinstance(value, dict) and _is_number(value.get("value")):
            out[str(key)] = float(value["value"])
    return out


def read_metrics_json(path: Path) -> list[tuple[str, str, float]]:
    """(category, metric, value) from ``metrics.json`` in the shapes an evaluator may use:
    ``[{category, <metric>...}]``; ``{"per_category": {cat: {...}} | [...], "mean": {...}}``;
    ``{cat: {metric: v}}``; or a flat ``{metric: v}`` (read as the mean)."""
    data = json.loads(Path(path).read_text())
    rows: list[tuple[str, str, float]] = []

    def records(items: Iterable[Any]) -> None:
        for rec in items:
            if isinstance(rec, dict):
                cat = next((str(rec[k]) for k in CATEGORY_KEYS if k in rec), "mean")
                rows.extend((cat, m, v) for m, v in _metrics_of(rec).items())

    def by_category(mapping: dict[str, Any]) -> None:
        for cat, value in mapping.items():
            rows.extend((str(cat), m, v) for m, v in _metrics_of(value).items())

    if isinstance(data, list):
        records(data)
        return rows
    if not isinstance(data, dict):
        return rows
    if isinstance(data.get("metrics"), (dict, list)) and not _metrics_of(data):
        data = data["metrics"]
        if isinstance(data, list):
            records(data)
            return rows
    nested = next((data[k] for k in ("per_category", "categories") if k in data), None)
    if nested is not None:
        records(nested) if isinstance(nested, list) else by_category(nested)
        if isinstance(data.get("mean"), dict):
            rows.extend(("mean", m, v) for m, v in _metrics_of(data["mean"]).items())
        return rows
    flat = _metrics_of(data)
    if flat:
        rows.extend(("mean", m, v) for m, v in flat.items())
    else:
        by_category({k: v for k, v in data.items() if isinstance(v, dict)})
    return rows


def read_cell_metrics(run_dir: Path) -> list[tuple[str, str, float]]:
    """Metrics of one cell; ``metrics.csv`` next to ``metrics.json`` wins when present."""
    json_path = find_metrics_json(run_dir)
    if json_path is None:
        return []
    csv_path = json_path.with_name("metrics.csv")
    rows: list[tuple[str, str, float]] = []
    if csv_path.is_file():
        try:
            rows = read_metrics_csv(csv_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError):
            rows = []
    if not rows:
        rows = read_metrics_json(json_path)
    return rows


def _normalise_category(label: str) -> str:
    return "mean" if label.strip().lower() in MEAN_LABELS else label.strip()


def collect_results(grid: GridConfig, cells: Sequence[Cell], cells_root: Path | None = None) -> pd.DataFrame:
    """Tidy long table of every finished cell of the grid."""
    root = cells_root or (grid.output_dir / "cells")
    records: list[dict[str, Any]] = []
    for cell in cells:
        rows = read_cell_metrics(root / cell.id)
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
