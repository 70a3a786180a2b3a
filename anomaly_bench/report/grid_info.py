"""What the grid says about its models and datasets: the papers' names, synthetic stand-ins,
paper protocol, the reference row.

Comparing with a paper's number only means something on the paper's own dataset. A dataset of a
grid counts as *real* only when the grid names its ``paper_dataset`` (explicitly or through its
datamodule class) and nothing marks it synthetic:

* ``synthetic: true`` on the dataset entry of the grid (``datasets[i].synthetic``);
* ``synthetic: true`` in a cell's ``cell_status.json`` tags;
* its root is the ``root`` of an entry of the grid's ``synth:`` section;
* its root holds :data:`SYNTHETIC_MARKER` (written by ``anomaly-bench synth``).

Without grid information (a plain results folder) nothing is compared. A model entry with
``paper_protocol: true`` (or a cell tag of that name) ran the paper's set-up; its rows are marked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.data.synthetic.writer import SYNTHETIC_MARKER
from anomaly_bench.report.collect import RunRecord

GRID_FILE = "grid.yaml"
REFERENCE_METHOD = "PatchCore"


@dataclass
class ModelInfo:
    name: str
    paper_method: str | None = None
    paper_protocol: bool = False


@dataclass
class DatasetInfo:
    name: str
    paper_dataset: str | None = None
    synthetic: bool | None = None
    root: str | None = None


@dataclass
class GridInfo:
    """The grid-level facts a report needs; empty when the folder has no grid description."""

    name: str | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    synth_roots: list[str] = field(default_factory=list)
    source: str | None = None


def _norm(path: str | None) -> str | None:
    return os.path.normpath(str(path)) if path else None


def _last(class_path: Any) -> str | None:
    return class_path.rsplit(".", 1)[-1] if isinstance(class_path, str) and class_path else None


def _true(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def grid_info_from_mapping(raw: Any, source: str | None = None) -> GridInfo:
    """Read the facts from a grid mapping (a ``benchmarks/*.yaml`` file), tolerating anything
    else in it; config files it names need not exist (a folder copied from a cluster).

    Args:
        raw: the parsed grid YAML.
        source: where it came from (shown in the report).
    """
    info = GridInfo(source=source)
    if not isinstance(raw, dict):
        return info
    info.name = str(raw["name"]) if raw.get("name") else None
    for entry in raw.get("models") or []:
        if isinstance(entry, str):
            entry = {"config": entry} if entry.endswith((".yaml", ".yml")) else {"class_path": entry}
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or (
            Path(str(entry["config"])).stem if entry.get("config") else _last(entry.get("class_path"))
        )
        if name:
            info.models[str(name)] = ModelInfo(
                str(name),
                entry.get("paper_method") or _last(entry.get("class_path")),
                bool(_true(entry.get("paper_protocol"))),
            )
    for entry in raw.get("datasets") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or _last(entry.get("class_path"))
        if name:
            root = (
                (entry.get("init_args") or {}).get("root")
                if isinstance(entry.get("init_args"), dict)
                else None
            )
            info.datasets[str(name)] = DatasetInfo(
                str(name),
                entry.get("paper_dataset") or _last(entry.get("class_path")),
                _true(entry.get("synthetic")),
                _norm(root),
            )
    synth = raw.get("synth") or []
    for entry in [synth] if isinstance(synth, dict) else synth:
        if isinstance(entry, dict) and entry.get("root"):
            info.synth_roots.append(_norm(str(entry["root"])))
    return info


def grid_info_from_config(grid: Any) -> GridInfo:
    """The facts from an in-memory ``benchmark.grid.GridConfig`` (fields read by name, so grid
    fields added later, ``synthetic`` / ``paper_protocol``, are used when present).

    Args:
        grid: a ``GridConfig``.
    """
    info = GridInfo(name=getattr(grid, "name", None), source="grid config")
    from anomaly_bench.benchmark.paper import paper_names  # a model's paper name may come from its config

    try:
        methods, _ = paper_names(grid)
    except Exception:  # an unreadable model config: fall back to the names in the grid
        methods = {}
    for model in getattr(grid, "models", ()):
        info.models[model.name] = ModelInfo(
            model.name,
            methods.get(model.name) or model.paper_method,
            bool(getattr(model, "paper_protocol", False)),
        )
    for dataset in getattr(grid, "datasets", ()):
        root = (dataset.init_args or {}).get("root")
        info.datasets[dataset.name] = DatasetInfo(
            dataset.name, dataset.paper_dataset, _true(getattr(dataset, "synthetic", None)), _norm(root)
        )
    info.synth_roots = [
        _norm(str(entry["root"])) for entry in getattr(grid, "synth", ()) if entry.get("root")
    ]
    return info


def read_grid_info(folder: str | Path) -> GridInfo:
    """``<folder>/grid.yaml`` (the grid file the benchmark ran), or empty facts without one.

    Args:
        folder: a grid output folder.
    """
    path = Path(folder) / GRID_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return GridInfo()
    return grid_info_from_mapping(raw, str(path))


def root_is_synthetic(root: str | None) -> bool:
    """True when the dataset root holds the synthetic writer's marker file.

    Args:
        root: a dataset root (need not exist).
    """
    return bool(root) and (Path(root) / SYNTHETIC_MARKER).is_file()


def dataset_is_synthetic(info: GridInfo, dataset: str, runs: Iterable[RunRecord]) -> bool:
    """Whether a dataset of the grid is a synthetic stand-in (see the module docstring).

    Args:
        info: the grid facts.
        dataset: the dataset name.
        runs: the runs of that dataset.
    """
    spec = info.datasets.get(dataset)
    if spec is not None and spec.synthetic is not None:
        return spec.synthetic
    roots = {spec.root} if spec is not None and spec.root else set()
    for run in runs:
        if _true(run.tags.get("synthetic")):
            return True
        if run.data_root:
            roots.add(_norm(run.data_root))
    synth_roots = {r for r in info.synth_roots if r}
    return any(root in synth_roots or root_is_synthetic(root) for root in roots)


def paper_dataset(info: GridInfo, dataset: str, runs: Iterable[RunRecord]) -> str | None:
    """The paper's name of a *real* dataset of the grid, or None (synthetic, or no grid facts).

    Args:
        info: the grid facts.
        dataset: the dataset name.
        runs: the runs of that dataset.
    """
    runs = list(runs)
    spec = info.datasets.get(dataset)
    name = (spec.paper_dataset if spec is not None else None) or next(
        (str(r.tags["paper_dataset"]) for r in runs if r.tags.get("paper_dataset")), None
    )
    if name is None or dataset_is_synthetic(info, dataset, runs):
        return None
    return name


def paper_method(info: GridInfo, model: str, runs: Iterable[RunRecord]) -> str:
    """The paper table's name of a model: the grid's ``paper_method``, a cell tag, the model
    class of its config, or its own name.

    Args:
        info: the grid facts.
        model: the model name in the grid.
        runs: the runs of that model.
    """
    spec = info.models.get(model)
    if spec is not None and spec.paper_method:
        return spec.paper_method
    for run in runs:
        if run.tags.get("paper_method"):
            return str(run.tags["paper_method"])
        if run.model_class:
            return run.model_class
    return model


def is_paper_protocol(info: GridInfo, model: str, runs: Iterable[RunRecord]) -> bool:
    """Whether the model's cells ran the paper's protocol (``metrics.json`` ``protocol: paper``, written
    by ``configs/protocols/paper.yaml``; or the grid's ``paper_protocol`` / a cell tag).

    Args:
        info: the grid facts.
        model: the model name in the grid.
        runs: the runs of that model.
    """
    spec = info.models.get(model)
    return bool(spec is not None and spec.paper_protocol) or any(
        _true(r.tags.get("paper_protocol")) or (r.metrics or {}).get("protocol") == "paper" for r in runs
    )


def model_order(info: GridInfo, models: Iterable[str], methods: dict[str, str]) -> list[str]:
    """The reference method (PatchCore) first, then the grid's order, then the rest by name.

    Args:
        info: the grid facts.
        models: the model names present.
        methods: model name -> paper method name.
    """
    present = list(dict.fromkeys(models))
    grid_order = {name: i for i, name in enumerate(info.models)}

    def key(name: str) -> tuple[int, int, str]:
        reference = (
            name.lower() == REFERENCE_METHOD.lower()
            or methods.get(name, "").lower() == REFERENCE_METHOD.lower()
        )
        return (0 if reference else 1, grid_order.get(name, len(grid_order)), name)

    return sorted(present, key=key)
