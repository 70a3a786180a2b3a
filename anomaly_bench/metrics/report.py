"""From filled metric states to the results table (one row per category plus ``mean``) and files.

Shared by the Evaluator callback and ``anomaly-bench evaluate`` (through ``accumulator.py``) so
both write identical files. :func:`write_tables` writes ``metrics.csv`` and ``metrics.json``
(atomically, the JSON last: it is a benchmark cell's done marker); :func:`read_tables` is its
inverse, what every reader of results uses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly_bench.atomic import atomic_write_text
from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.ground_truth import CONNECTIVITY
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.thresholds import Thresholds, counts_at, precision_recall_f1

METRIC_VERSION = "1.0"

# Image tags: which subset an image belongs to (MVTec LOCO reports logical / structural apart).
# The subset comes from the data (``Sample.subset``), never from folder names.
TAG_GOOD, TAG_LOGICAL, TAG_STRUCTURAL, TAG_ANOMALOUS = 0, 1, 2, 3
SUBSET_TAGS = {"logical": TAG_LOGICAL, "structural": TAG_STRUCTURAL}
ALL_TAGS = (TAG_GOOD, TAG_LOGICAL, TAG_STRUCTURAL, TAG_ANOMALOUS)
LOCO_SUBSETS = {"logical": (TAG_GOOD, TAG_LOGICAL), "structural": (TAG_GOOD, TAG_STRUCTURAL)}
MAIN_COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")
ORACLE_COLUMNS = ("image_f1max_oracle", "pixel_f1max_oracle")
COUNT_COLUMNS = ("num_images", "num_anomalous")
OPERATING_COLUMNS = ("precision", "recall", "f1")  # prefixed image_ / pixel_: at the fitted threshold
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"


class MetricsFileError(ValueError):
    """A ``metrics.json`` is missing, unreadable or not what :func:`write_tables` writes."""


def image_tag(label: int, subset: str = "") -> int:
    """The tag of an image: good, its evaluation subset (``Sample.subset``), or plain anomalous.

    Args:
        label: 0 normal, 1 anomalous.
        subset: ``logical`` | ``structural`` | ``""``.
    """
    if label == 0:
        return TAG_GOOD
    if subset and subset not in SUBSET_TAGS:
        raise ValueError(f"unknown evaluation subset {subset!r}; expected one of {sorted(SUBSET_TAGS)} or ''")
    return SUBSET_TAGS.get(subset, TAG_ANOMALOUS)


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


def _operating_row(prefix: str, counts: tuple[float, float, float] | None) -> dict[str, float | None]:
    """``<prefix>_precision / _recall / _f1`` from (true positives, false positives, false negatives)."""
    values = precision_recall_f1(*counts) if counts is not None else dict.fromkeys(OPERATING_COLUMNS)
    return {f"{prefix}_{key}": _finite(values[key]) for key in OPERATING_COLUMNS}


def category_result(
    name: str,
    group: int,
    images: ImageRankingMetric,
    pixels: PixelRankingMetric | None,
    config: ReportConfig,
    thresholds: Thresholds | None = None,
) -> CategoryResult:
    """Every number of one category; a metric that is undefined (one class only, no masks) is None.

    Args:
        name: the category's name (the row's ``category``).
        group: the category's group id in the metric states.
        images: image scores and labels.
        pixels: maps and ground truths (None: image metrics only).
        config: limits and settings of the evaluation.
        thresholds: operating thresholds fitted on normal images; when given, the row adds
            ``image_precision / _recall / _f1`` (and ``pixel_*`` with a pixel threshold) at them.
    """
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
    if thresholds is not None and thresholds.image is not None:
        row.update(_operating_row("image", counts_at(scores[mine], labels, thresholds.image)))
    result = CategoryResult(row, image_curves)

    anomalous_with_truth = bool(((labels == 1) & (has_truth == 1)).any())
    all_anomalous_have_truth = bool((~(labels == 1) | (has_truth == 1)).all())
    if pixels is not None and anomalous_with_truth and all_anomalous_have_truth:
        subsets = {"all": ALL_TAGS, **(LOCO_SUBSETS if is_loco else {})}
        pixel_threshold = thresholds.pixel if thresholds is not None else None
        operating = (pixel_threshold,) if pixel_threshold is not None else ()
        curves = pixels.curves(subsets, group=group, operating_thresholds=operating)
        result.pixel_curves = curves
        overall = curves.get("all")
        if overall is not None:
            row["pixel_auroc"] = _finite(overall.auroc())
            row["pixel_ap"] = _finite(overall.average_precision())
            row["pixel_aupro"] = _finite(overall.aupro(config.fpr_limit))
            if config.oracle_f1:
                row["pixel_f1max_oracle"] = _finite(overall.f1_max_oracle()[0])
            if pixel_threshold is not None:
                false_pos, true_pos = overall.operating[float(pixel_threshold)]
                row.update(_operating_row("pixel", (true_pos, false_pos, overall.points.total_positives - true_pos)))
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


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buffer.getvalue()


def write_tables(
    rows: list[dict[str, Any]], run_dir: str | Path, config: ReportConfig, extra: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``run_dir``, each atomically, the JSON last.

    Args:
        rows: one dict per category plus ``mean`` (``with_mean_row``).
        run_dir: the folder to write into (created if needed).
        config: the evaluation settings recorded in the JSON.
        extra: further JSON keys (``modes_used``, ``stage``, ``thresholds``...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    columns = ordered_columns(rows)
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
    # serialise before writing anything: a value JSON refuses must not leave a CSV without its JSON
    json_text = json.dumps(info, indent=2, allow_nan=False, default=str)
    csv_path, json_path = run_dir / METRICS_CSV, run_dir / METRICS_JSON
    atomic_write_text(csv_path, _csv_text(rows, columns))
    atomic_write_text(json_path, json_text)
    return csv_path, json_path


def read_tables(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The inverse of :func:`write_tables`: ``(rows, meta)`` from ``<folder>/metrics.json``.

    ``rows`` are the per-category rows plus ``mean`` exactly as written (numbers, None where a
    metric is undefined); ``meta`` is every other key of the file (``fpr_limit``, ``columns``,
    ``modes_used``, ``thresholds``...). Errors are one line naming the file.

    Args:
        folder: a folder holding ``metrics.json`` (a run directory), or the file itself.
    """
    path = Path(folder)
    if path.is_dir() or path.name != METRICS_JSON:
        path = path / METRICS_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsFileError(f"no {METRICS_JSON} in {path.parent} (has this run been tested?)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MetricsFileError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise MetricsFileError(f"{path} is not valid JSON ({err}); it may have been cut short") from None
    if not isinstance(data, dict) or "metric_version" not in data or not isinstance(data.get("rows"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise MetricsFileError(
            f"{path} is not a metrics file written by anomaly_bench (expected the keys metric_version, "
            f"columns, rows; found {found})"
        )
    rows = data.pop("rows")
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("category"), str):
            raise MetricsFileError(f"{path}: rows[{number}] must be an object with a 'category' string, got {row!r}")
    return rows, data


def metric_values(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    """``(category, metric, value)`` for every number of the rows (counts excluded).

    Args:
        rows: rows as :func:`read_tables` returns them.
    """
    out = []
    for row in rows:
        for key, value in row.items():
            if key == "category" or key in COUNT_COLUMNS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append((str(row["category"]), key, float(value)))
    return out


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table for terminals and logs."""
    columns = ordered_columns(rows)
    cells = [[("-" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
