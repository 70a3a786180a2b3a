"""Read what a report needs from run directories, with every file optional.

A *run* is a directory holding ``metrics.json`` (what ``test`` writes). A *grid output folder* is
anything with runs below it: ``anomaly-bench benchmark`` writes ``<output_dir>/cells/<cell id>/``
(plus ``cell_status.json`` and ``cell_config.yaml`` per cell), a plain ``results/`` tree has
``<Model>/<DataModule>/<category>/version_<N>/``. Who ran what is read from, in this order:
``cell_status.json`` tags, the saved config (``cell_config.yaml``, ``config_test.yaml``,
``config.yaml``), the folder names.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.benchmark.results import read_cell_metrics
from anomaly_bench.callbacks.test_stats import TestStats, read_test_stats

METRICS_FILE = "metrics.json"
CONFIG_FILES = ("cell_config.yaml", "config_test.yaml", "config.yaml")
RUN_INFO_FILES = ("run_info_test.json", "run_info_fit.json")
STATUS_FILE = "cell_status.json"
SCORES_FILE = "scores.csv"
UNIFIED_WORDS = ("all", "unified")


class ReportInputError(ValueError):
    """The path given to the report is not a run directory nor a folder with runs below it."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _class_name(section: Any) -> str | None:
    if isinstance(section, dict) and isinstance(section.get("class_path"), str):
        return section["class_path"].rsplit(".", 1)[-1]
    return None


@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    run_dir: Path
    model: str
    dataset: str
    setting: str
    category_label: str
    seed: int | None
    metrics: dict[str, Any]
    long: list[tuple[str, str, float]]
    cell_id: str | None = None
    status: str | None = None
    fit_s: float | None = None
    test_s: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_name: str | None = None
    config_text: str | None = None
    run_info: dict[str, Any] | None = None
    test_stats: TestStats | None = None

    @property
    def model_class(self) -> str | None:
        """The model's class name from the saved config (e.g. ``CRAD``)."""
        return _class_name(self.config.get("model"))

    @property
    def data_class(self) -> str | None:
        """The datamodule's class name from the saved config (e.g. ``MVTecAD``)."""
        return _class_name(self.config.get("data"))

    @property
    def data_root(self) -> str | None:
        """``data.init_args.root`` of the saved config."""
        data = self.config.get("data")
        root = (data.get("init_args") or {}).get("root") if isinstance(data, dict) else None
        return str(root) if root is not None else None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The per-category rows of ``metrics.json`` (``mean`` excluded)."""
        rows = self.metrics.get("rows")
        if not isinstance(rows, list):
            return []
        return [r for r in rows if isinstance(r, dict) and str(r.get("category")) != "mean"]

    def threshold(self, category: str) -> float | None:
        """The image threshold ``metrics.json`` records (issue 19): ``thresholds.image`` as one
        number or per category; None when there is none.

        Args:
            category: the category asked about.
        """
        thresholds = self.metrics.get("thresholds")
        value = thresholds.get("image") if isinstance(thresholds, dict) else None
        if isinstance(value, dict):
            value = value.get(category, value.get("all"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    def scores(self) -> list[dict[str, Any]]:
        """Rows of ``scores.csv`` (path, category, defect, label, pred_score); empty if absent."""
        path = self.run_dir / SCORES_FILE
        out: list[dict[str, Any]] = []
        try:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    try:
                        out.append(
                            {
                                "path": row.get("path", ""),
                                "category": row.get("category", ""),
                                "defect": row.get("defect", ""),
                                "label": int(float(row["label"])),
                                "score": float(row["pred_score"]),
                            }
                        )
                    except (KeyError, TypeError, ValueError):
                        continue
        except OSError:
            return []
        return out


def _identity(
    run_dir: Path, config: dict[str, Any], tags: dict[str, Any], root: Path | None
) -> dict[str, Any]:
    """model, dataset, setting, category label, seed: tags first, then the config, then folder names."""
    parts = run_dir.relative_to(root).parts if root is not None and run_dir != root else ()
    if parts and parts[0] == "cells":
        parts = parts[1:]
    model = tags.get("model") or (parts[0] if len(parts) >= 3 else None) or _class_name(config.get("model"))
    dataset = (
        tags.get("dataset") or (parts[1] if len(parts) >= 3 else None) or _class_name(config.get("data"))
    )
    data_args = (
        (config.get("data") or {}).get("init_args") or {} if isinstance(config.get("data"), dict) else {}
    )
    category = tags.get("category")
    if category is None:
        raw = data_args.get("category")
        category = (
            "+".join(map(str, raw)) if isinstance(raw, list) else (str(raw) if raw is not None else None)
        )
    category = category or (parts[2] if len(parts) >= 3 else "default")
    setting = tags.get("setting") or (
        "unified" if category in UNIFIED_WORDS or "+" in category else "separate"
    )
    seed = tags.get("seed", config.get("seed_everything"))
    try:
        seed = int(seed) if seed is not None and not isinstance(seed, bool) else None
    except (TypeError, ValueError):
        seed = None
    return {
        "model": str(model or "model"),
        "dataset": str(dataset or "data"),
        "setting": str(setting),
        "category_label": str(category),
        "seed": seed,
    }


def read_run(run_dir: str | Path, root: str | Path | None = None) -> RunRecord:
    """Everything the report reads from one run directory.

    Args:
        run_dir: a directory holding ``metrics.json``.
        root: the folder the report was asked about (folder names below it name the run when
            no tags or config say otherwise).
    """
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / METRICS_FILE)
    if metrics is None:
        raise ReportInputError(
            f"{run_dir / METRICS_FILE}: missing or not a JSON object; is this a finished run?"
        )
    status = _read_json(run_dir / STATUS_FILE) or {}
    tags = status.get("tags") if isinstance(status.get("tags"), dict) else {}
    config, config_name, config_text = {}, None, None
    for name in CONFIG_FILES:
        text = _read_text(run_dir / name)
        if text is None:
            continue
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(parsed, dict):
            config, config_name, config_text = parsed, name, text
            break
    run_info = next(
        (info for name in RUN_INFO_FILES if (info := _read_json(run_dir / name)) is not None), None
    )
    identity = _identity(run_dir, config, tags, Path(root) if root is not None else None)
    try:
        long = read_cell_metrics(run_dir)
    except Exception:  # an odd metrics file must not cost the rest of the report
        long = []
    number = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
    return RunRecord(
        run_dir=run_dir,
        metrics=metrics,
        long=long,
        cell_id=status.get("cell_id") or tags.get("cell_id"),
        status=status.get("status"),
        fit_s=number(status.get("fit_s")),
        test_s=number(status.get("test_s")),
        tags=tags,
        config=config,
        config_name=config_name,
        config_text=config_text,
        run_info=run_info,
        test_stats=read_test_stats(run_dir),
        **identity,
    )


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a ``metrics.json`` (a finished ``test``).

    Args:
        path: a directory.
    """
    return (Path(path) / METRICS_FILE).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories below ``root`` (not following symlinks such as ``latest``; a run's own
    subfolders are not searched).

    Args:
        root: a grid output folder or a results tree.
    """
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        if METRICS_FILE in files:
            found.append(Path(folder))
            subfolders[:] = []
            continue
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return found


def failed_cells(root: str | Path) -> list[dict[str, Any]]:
    """``cell_status.json`` of the cells below ``root`` that failed (they have no ``metrics.json``).

    Args:
        root: a grid output folder.
    """
    found: list[dict[str, Any]] = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        if METRICS_FILE in files:
            subfolders[:] = []
            continue
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if STATUS_FILE in files:
            status = _read_json(Path(folder) / STATUS_FILE)
            if status is not None and status.get("status") == "failed":
                found.append({**status, "run_dir": folder})
    return found


def collect_runs(root: str | Path) -> list[RunRecord]:
    """Every run below ``root``; of several runs with the same model, dataset, category and seed
    (e.g. ``version_0`` and ``version_1``) the newest ``metrics.json`` wins.

    Args:
        root: a grid output folder or a results tree.
    """
    newest: dict[tuple[Any, ...], tuple[float, RunRecord]] = {}
    for run_dir in find_runs(root):
        record = read_run(run_dir, root)
        key = (record.model, record.dataset, record.setting, record.category_label, record.seed)
        mtime = (run_dir / METRICS_FILE).stat().st_mtime
        if key not in newest or mtime > newest[key][0]:
            newest[key] = (mtime, record)
    return sorted(
        (r for _, r in newest.values()),
        key=lambda r: (r.dataset, r.setting, r.model, r.category_label, r.seed if r.seed is not None else -1),
    )
