"""Build the complete CLI config of one cell.

We merge everything in Python into ONE YAML file per cell (model config file < grid trainer <
model entry < dataset entry < cell specifics) instead of stacking several ``--config`` flags, so the
merge rules are ours, documented and tested, and the file in the cell directory is an exact record
of what ran.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.atomic import atomic_write_text
from anomaly_bench.benchmark.grid import Cell, GridConfig, GridError, WandbSpec

# Data init args every AnomalyDataModule accepts: they survive a change of datamodule class, so a
# model config's image_size/batch_size still apply when the grid swaps in another dataset.
COMMON_DATA_ARGS = (
    "image_size",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "normalization",
    "train_augmentations",
    "validation",
    "val_fraction",
    "cache",
    "cache_dir",
)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins, lists and scalars are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_class_section(base: Any, class_path: str | None, init_args: dict[str, Any],
                        keep_on_class_change: tuple[str, ...] = ()) -> dict[str, Any]:
    """Merge a ``{class_path, init_args}`` section. Same (or no) class: init_args are merged.
    Different class: the old init_args are dropped except the keys in ``keep_on_class_change``."""
    base = copy.deepcopy(base) if isinstance(base, dict) else {}
    old_class = base.get("class_path")
    old_args = base.get("init_args") or {}
    if class_path is None or class_path == old_class:
        return {"class_path": old_class or class_path, "init_args": deep_merge(old_args, init_args)}
    kept = {k: v for k, v in old_args.items() if k in keep_on_class_change}
    return {"class_path": class_path, "init_args": deep_merge(kept, init_args)}


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise GridError(f"cannot read model config {path}: {err}") from err
    if not isinstance(data, dict):
        raise GridError(f"model config {path} must be a mapping (seed_everything/trainer/model/data)")
    return data


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become strings so W&B can filter on them."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


def wandb_mode(spec: WandbSpec) -> str:
    """``auto`` means online when an API key is configured, offline otherwise (no network here)."""
    if spec.mode != "auto":
        return spec.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    try:
        if netrc.is_file() and "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def cell_tags(grid: GridConfig, cell: Cell) -> dict[str, Any]:
    """The identifying fields of a cell, used in W&B config and results tables."""
    return {
        "grid": grid.name,
        "cell_id": cell.id,
        "model": cell.model.name,
        "dataset": cell.dataset.name,
        "category": cell.category_label,
        "setting": cell.setting,
        "seed": cell.seed,
        "paper_method": cell.model.paper_method,
        "paper_dataset": cell.dataset.paper_dataset,
        "synthetic": cell.dataset.synthetic,
        "paper_protocol": cell.model.paper_protocol,
    }


def build_cell_config(grid: GridConfig, cell: Cell, run_dir: Path) -> dict[str, Any]:
    """The full LightningCLI config of ``cell`` (to be written as YAML and passed with --config)."""
    model = cell.model
    config = load_yaml_mapping(model.config) if model.config else {}
    config = copy.deepcopy(config)

    # model section
    if model.class_path is None and "model" not in config:
        raise GridError(f"model {model.name!r}: its config {model.config} has no 'model' section and no class_path")
    config["model"] = merge_class_section(config.get("model"), model.class_path, model.init_args)

    # trainer: model config < grid trainer < model entry trainer
    trainer = deep_merge(config.get("trainer") or {}, grid.trainer)
    trainer = deep_merge(trainer, model.trainer)

    # data: model config < dataset entry < model entry data args < category of the cell
    data = config.get("data")
    ds = cell.dataset
    if ds.class_path is None and not isinstance(data, dict):
        raise GridError(
            f"model {model.name!r}: the grid has no datasets section and its config has no 'data' section"
        )
    data = merge_class_section(data, ds.class_path, ds.init_args, keep_on_class_change=COMMON_DATA_ARGS)
    data["init_args"] = deep_merge(data["init_args"], model.data)
    data["init_args"]["category"] = cell.category_arg
    config["data"] = data

    config["seed_everything"] = cell.seed
    trainer["default_root_dir"] = str(run_dir)
    if grid.wandb is not None:
        trainer["logger"] = wandb_logger_section(grid, cell, run_dir, config)
    config["trainer"] = trainer
    return config


def wandb_logger_section(grid: GridConfig, cell: Cell, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A WandbLogger in the cell's group, named by the cell id, with the flattened config attached
    so runs can be filtered by any hyper-parameter in the W&B UI."""
    spec = grid.wandb
    assert spec is not None
    flat = flatten({k: v for k, v in config.items() if k in ("model", "data", "seed_everything")})
    flat.update({f"bench.{k}": v for k, v in cell_tags(grid, cell).items()})
    init_args: dict[str, Any] = {
        "project": spec.project,
        "group": spec.group or grid.name,
        "name": cell.id,
        # fit and test are two processes: the same id + resume makes them one W&B run
        "id": hashlib.sha1(f"{grid.name}/{cell.id}".encode()).hexdigest()[:16],
        "resume": "allow",
        "job_type": cell.setting,
        "save_dir": str(run_dir),
        "mode": wandb_mode(spec),
        "tags": [cell.model.name, cell.dataset.name, *spec.tags],
        "config": flat,
    }
    if spec.entity:
        init_args["entity"] = spec.entity
    return {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": init_args}


def write_cell_config(config: dict[str, Any], path: Path) -> Path:
    """Write a cell's config atomically (a runner killed mid-write never leaves half a config)."""
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path
