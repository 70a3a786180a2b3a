"""From filled metric states to the results table (one row per category plus ``mean``) and files.

Shared by the Evaluator callback and ``anomaly-bench evaluate`` so both write identical files.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.ground_truth import CONNECTIVITY
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric

METRIC_VERSION = "1.0"

# Image tags: which subset an image belongs to (MVTec LOCO reports logical / structural apart).
TAG_GOOD, TAG_LOGICAL, TAG_STRUCTURAL, TAG_ANOMALOUS = 0, 1, 2, 3
LOCO_FOLDERS = {"logical_anomalies": TAG_LOGICAL, "structural_anomalies": TAG_STRUCTURAL}
ALL_TAGS = (TAG_GOOD, TAG_LOGICAL, TAG_STRUCTURAL, TAG_ANOMALOUS)
LOCO_SUBSETS = {"logical": (TAG_GOOD, TAG_LOGICAL), "structural": (TAG_GOOD, TAG_STRUCTURAL)}
MAIN_COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")
ORACLE_COLUMNS = ("image_f1max_oracle", "pixel_f1max_oracle")
COUNT_COLUMNS = ("num_images", "num_anomalous")


def image_tag(label: int, defect: str) -> int:
    if label == 0:
        return TAG_GOOD
    return LOCO_FOLDERS.get(defect, TAG_ANOMALOUS)


def stable_id(text: str) -> int:
    """A 63-bit id that is the same in every process (Python's ``hash`` is salted per process)."""
    data = text.encode("utf-8")
    return ((zlib.adler32(data) & 0x7FFFFFFF) << 32) | zlib.crc32(data)


@dataclass
class ReportConfig:
    fpr_limit: float = 0.3
    spro_limits: tuple[float, ...] = (0.05, 0.3)
    oracle_f1: bool = True
    resolution: Any = "native"
    mode: str = "auto"
    binning: dict[str, Any] = field(default_factory=dict)


@dataclass
class CategoryResult:
    row: dict[str, Any]
    image_curves: RankingCurves | None = None
    pixel_curves: dict[str, RankingCurves] = field(default_factory=dict)


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def category_result(
    name: str,
    group: int,
    images: ImageRankingMetric,
    pixels: PixelRankingMetric | None,
    config: ReportConfig,
) -> CategoryResult:
    """Every number of one category; a metric that is undefined (one class only, no masks) is None."""
    scores, meta = images.table()
    mine = meta[:, 2] == group
    labels, tags, has_truth = meta[mine, 0], meta[mine, 1], meta[mine, 4]
    tags_present = set(tags.tolist())
    is_loco = bool(tags_present & {TAG_LOGICAL, TAG_STRUCTURAL})
    row: dict[str, Any] = {"category": name}
    image_curves = images.curves(group=group)
    row["image_auroc"] = _finite(image_curves.auroc())
    row["image_ap"] = _finite(image_curves.average_precision())
    if is_loco:
        for subset, subset_tags in LOCO_SUBSETS.items():
            curves = images.curves(group=group, tags=subset_tags)
            row[f"image_auroc_{subset}"] = _finite(curves.auroc())
            row[f"image_ap_{subset}"] = _finite(curves.average_precision())
    result = CategoryResult(row, image_curves)

    anomalous_with_truth = bool(((labels == 1) & (has_truth == 1)).any())
    all_anomalous_have_truth = bool((~(labels == 1) | (has_truth == 1)).all())
    if pixels is not None and anomalous_with_truth and all_anomalous_have_truth:
        subsets = {"all": ALL_TAGS, **(LOCO_SUBSETS if is_loco else {})}
        curves = pixels.curves(subsets, group=group)
        result.pixel_curves = curves
        overall = curves.get("all")
        if overall is not None:
            row["pixel_auroc"] = _finite(overall.auroc())
            row["pixel_ap"] = _finite(overall.average_precision())
            row["pixel_aupro"] = _finite(overall.aupro(config.fpr_limit))
            if config.oracle_f1:
                row["pixel_f1max_oracle"] = _finite(overall.f1_max_oracle()[0])
        if is_loco:
            for limit in config.spro_limits:
                per_subset = []
                for subset in LOCO_SUBSETS:
                    value = _finite(curves[subset].auspro(limit)) if subset in curves else None
                    row[f"pixel_auspro_{subset}@{limit:g}"] = value
                    per_subset.append(value)
                finite = [v for v in per_subset if v is not None]
                row[f"pixel_auspro@{limit:g}"] = sum(finite) / len(finite) if len(finite) == len(per_subset) else None
    if config.oracle_f1:
        row["image_f1max_oracle"] = _finite(image_curves.f1_max_oracle()[0])
    row["num_images"] = int(mine.sum())
    row["num_anomalous"] = int((labels == 1).sum())
    return result


def ordered_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """category, the main five, LOCO splits, oracle numbers, counts; then anything else."""
    present: list[str] = []
    for row in rows:
        present += [k for k in row if k not in present]
    head = ["category", *[c for c in MAIN_COLUMNS if c in present]]
    tail = [c for c in (*ORACLE_COLUMNS, *COUNT_COLUMNS) if c in present]
    middle = [c for c in present if c not in head and c not in tail]
    return head + middle + tail


def with_mean_row(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``mean``: the plain mean over categories, only where every category has the value."""
    if not rows:
        return rows
    mean: dict[str, Any] = {"category": "mean"}
    for column in ordered_columns(rows)[1:]:
        values = [row.get(column) for row in rows]
        if column in COUNT_COLUMNS:
            mean[column] = sum(int(v or 0) for v in values)
        elif all(isinstance(v, (int, float)) for v in values):
            mean[column] = sum(values) / len(values)
        else:
            mean[column] = None
    return [*rows, mean]


def write_tables(
    rows: list[dict[str, Any]], run_dir: str | Path, config: ReportConfig, extra: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    columns = ordered_columns(rows)
    csv_path = run_dir / "metrics.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    info = {
        "metric_version": METRIC_VERSION,
        "fpr_limit": config.fpr_limit,
        "spro_limits": list(config.spro_limits),
        "resolution": config.resolution if isinstance(config.resolution, (str, int)) else list(config.resolution),
        "mode": config.mode,
        "binning": config.binning,
        "connectivity": CONNECTIVITY,
        "image_score": "the model's raw pred_score",
        "pixel_metrics_include_normal_images": True,
        "oracle_columns": [c for c in columns if c.endswith("_oracle")],
        "oracle_note": "F1-max picks its threshold on the test labels: an upper bound, not a deployable result",
        "mean_row": "plain mean over categories; empty where any category lacks the value",
        "columns": columns,
        "rows": rows,
        **(dict(extra) if extra else {}),
    }
    json_path = run_dir / "metrics.json"
    json_path.write_text(json.dumps(info, indent=2, allow_nan=False, default=str))
    return csv_path, json_path


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table for terminals and logs."""
    columns = ordered_columns(rows)
    cells = [[("-" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
