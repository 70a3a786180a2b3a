"""Grid config: parse a benchmark YAML and expand it into cells (model x dataset x category x seed).

A grid file is small and declarative; this module turns it into a flat list of ``Cell`` objects,
each with a stable id (``<model>/<dataset>/<category>/seed<k>``) that names its run directory. The
id must not change between runs of the same grid, because finished cells are found by it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.shipped import resolve_config_path

UNIFIED_WORDS = ("all", "unified")
EACH_WORD = "each"  # one separate model per category of the dataset

# Category names of the public datasets, so ``categories: each`` works without the data on disk.
KNOWN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "MVTecAD": ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                "screw", "tile", "toothbrush", "transistor", "wood", "zipper"),
    "VisA": ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
             "pcb3", "pcb4", "pipe_fryum"),
    "MPDD": ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
    "GoodsAD": ("cigarette_box", "drink_bottle", "drink_can", "food_bottle", "food_box", "food_package"),
    "MVTecLOCO": ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"),
}


class GridError(ValueError):
    """A grid file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the grid: a CLI config file and/or a class path with init_args overrides."""

    name: str
    config: Path | None = None
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # model-specific data init_args (image_size...)
    paper_method: str | None = None  # name of this method in benchmarks/paper_results.csv
    categories: tuple[str | tuple[str, ...], ...] | None = None  # overrides the dataset's categories
    paper_protocol: bool = False  # this model's cells run the papers' protocol (reports mark them)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the grid: a datamodule class path, its init_args and the categories to run."""

    name: str
    class_path: str | None
    init_args: dict[str, Any] = field(default_factory=dict)
    # Each entry is one cell: "all" (unified over every category), a name (separate model) or a
    # list of names (one unified model over that subset).
    categories: tuple[str | tuple[str, ...], ...] = ("all",)
    paper_dataset: str | None = None
    synthetic: bool | None = None  # a stand-in for paper_dataset: never compared with the papers' numbers


@dataclass(frozen=True)
class WandbSpec:
    project: str = "anomaly_bench"
    group: str | None = None
    mode: str = "auto"  # auto | online | offline | disabled
    entity: str | None = None
    tags: tuple[str, ...] = ()


LAUNCHERS = ("local", "ray")
DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class RaySpec:
    """How the ``ray`` launcher runs cells (the grid's ``ray:`` section).

    Args:
        address: Cluster to join: ``auto``, ``HOST:PORT`` or ``ray://HOST:10001``; None starts a local
            Ray instance on this machine.
        cpus_per_cell: CPUs each cell's Ray task requests.
        gpus_per_cell: GPUs each cell's task requests; None: one when the cluster has GPUs and the grid's
            ``devices`` is not ``cpu``, else none.
        memory_gb_per_cell: Memory (GiB) each task requests from Ray's scheduler (None: no request).
        max_retries: How often Ray re-runs a cell whose node died or whose stage was killed.
        init_args: Extra ``ray.init`` arguments for a local instance (``num_cpus``,
            ``object_store_memory``...).
    """

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float | None = None
    memory_gb_per_cell: float | None = None
    max_retries: int = 2
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GridConfig:
    name: str
    path: Path | None
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    seeds: tuple[int, ...] = (0,)
    trainer: dict[str, Any] = field(default_factory=dict)
    output_dir: Path = Path("runs/benchmark")
    wandb: WandbSpec | None = None
    synth: tuple[dict[str, Any], ...] = ()
    devices: str | tuple[int, ...] = "auto"  # "auto" | "cpu" | explicit GPU ids
    max_parallel: int | None = None
    timeout_s: float | None = None  # per stage (fit / test) of a cell
    extra: dict[str, Any] = field(default_factory=dict)  # top-level config keys (e.g. seed-independent)
    launcher: str = "local"  # local | ray
    ray: RaySpec = field(default_factory=RaySpec)
    lease_s: float = DEFAULT_LEASE_S  # a cell's lock expires this long after its runner's last heartbeat


@dataclass(frozen=True)
class Cell:
    """One fit + test run."""

    model: ModelSpec
    dataset: DatasetSpec
    category: str | tuple[str, ...]
    seed: int

    @property
    def category_label(self) -> str:
        if isinstance(self.category, tuple):
            return "+".join(self.category)
        return self.category

    @property
    def setting(self) -> str:
        """``unified`` (one model for several categories) or ``separate`` (one per category)."""
        if isinstance(self.category, tuple) or self.category in UNIFIED_WORDS:
            return "unified"
        return "separate"

    @property
    def id(self) -> str:
        return f"{_slug(self.model.name)}/{_slug(self.dataset.name)}/{_slug(self.category_label)}/seed{self.seed}"

    @property
    def category_arg(self) -> str | list[str]:
        """The value for the datamodule's ``category`` init arg."""
        if isinstance(self.category, tuple):
            return list(self.category)
        return "all" if self.category in UNIFIED_WORDS else self.category


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "_"


# --------------------------------------------------------------------------------------- parsing
def load_grid(path: str | Path) -> GridConfig:
    """Read and validate a grid YAML file."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"{path}: invalid YAML: {err}") from err
    return parse_grid(raw, path=path)


def parse_grid(raw: Any, path: Path | None = None, base_dir: Path | None = None) -> GridConfig:
    """Validate a grid given as a dict. Relative model config paths resolve against the current
    directory first (how users type them), then against the grid file's directory."""
    where = str(path) if path else "<grid>"
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    known = {"name", "models", "datasets", "seeds", "trainer", "output_dir", "wandb", "synth", "devices",
             "max_parallel", "timeout_s", "extra", "launcher", "ray", "lease_s"}
    unknown = set(raw) - known
    if unknown:
        raise GridError(f"{where}: unknown top-level keys {sorted(unknown)}; expected some of {sorted(known)}")
    base_dir = base_dir or (path.parent if path else Path.cwd())
    name = str(raw.get("name") or (path.stem if path else "grid"))

    models = _parse_models(raw.get("models"), where, base_dir)
    datasets = _parse_datasets(raw.get("datasets"), where)
    seeds = _parse_seeds(raw.get("seeds", [0]), where)
    trainer = _mapping(raw.get("trainer", {}), f"{where}: trainer")
    wandb = _parse_wandb(raw.get("wandb"), where, name)
    synth = raw.get("synth") or []
    if isinstance(synth, dict):
        synth = [synth]
    if not isinstance(synth, list) or not all(isinstance(s, dict) for s in synth):
        raise GridError(f"{where}: synth must be a mapping or a list of mappings (layout, root, ...)")
    for i, entry in enumerate(synth):
        if "layout" not in entry or "root" not in entry:
            raise GridError(f"{where}: synth[{i}] needs 'layout' and 'root', got keys {sorted(entry)}")
    devices = _parse_devices(raw.get("devices", "auto"), where)
    max_parallel = raw.get("max_parallel")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise GridError(f"{where}: max_parallel must be a positive integer, got {max_parallel!r}")
    timeout = raw.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise GridError(f"{where}: timeout_s must be a positive number of seconds, got {timeout!r}")
    output_dir = Path(raw.get("output_dir") or Path("runs/benchmark") / name)
    launcher = raw.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise GridError(f"{where}: launcher must be one of {list(LAUNCHERS)}, got {launcher!r}")
    lease_s = raw.get("lease_s", DEFAULT_LEASE_S)
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or lease_s <= 0:
        raise GridError(f"{where}: lease_s must be a positive number of seconds, got {lease_s!r}")
    return GridConfig(
        name=name,
        path=path,
        models=models,
        datasets=datasets,
        seeds=seeds,
        trainer=trainer,
        output_dir=output_dir,
        wandb=wandb,
        synth=tuple(synth),
        devices=devices,
        max_parallel=max_parallel,
        timeout_s=float(timeout) if timeout is not None else None,
        extra=_mapping(raw.get("extra", {}), f"{where}: extra"),
        launcher=launcher,
        ray=parse_ray(raw.get("ray"), where),
        lease_s=float(lease_s),
    )


def parse_ray(value: Any, where: str = "<grid>") -> RaySpec:
    """Validate the ``ray:`` section of a grid."""
    raw = _mapping(value, f"{where}: ray")
    allowed = {"address", "cpus_per_cell", "gpus_per_cell", "memory_gb_per_cell", "max_retries", "init_args"}
    unknown = set(raw) - allowed
    if unknown:
        raise GridError(f"{where}: ray: unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}")

    def number(key: str, default: float | None, minimum: float) -> float | None:
        value = raw.get(key, default)
        if value is None or (key == "gpus_per_cell" and value == "auto"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise GridError(f"{where}: ray.{key} must be a number >= {minimum}, got {value!r}")
        return float(value)

    address = raw.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise GridError(f"{where}: ray.address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT', "
                        f"got {address!r}")
    retries = raw.get("max_retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise GridError(f"{where}: ray.max_retries must be an integer >= 0, got {retries!r}")
    return RaySpec(
        address=address,
        cpus_per_cell=number("cpus_per_cell", 1.0, 0.0),  # type: ignore[arg-type]
        gpus_per_cell=number("gpus_per_cell", None, 0.0),
        memory_gb_per_cell=number("memory_gb_per_cell", None, 0.0),
        max_retries=retries,
        init_args=_mapping(raw.get("init_args", {}), f"{where}: ray.init_args"),
    )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where} must be a mapping, got {type(value).__name__}: {value!r}")
    return copy.deepcopy(value)


def _name_from_class_path(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _parse_models(value: Any, where: str, base_dir: Path) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: 'models' must be a non-empty list of model entries")
    specs: list[ModelSpec] = []
    for i, entry in enumerate(value):
        key = f"{where}: models[{i}]"
        if isinstance(entry, str):  # shorthand: a config file or a class path
            entry = {"config": entry} if entry.endswith((".yaml", ".yml")) else {"class_path": entry}
        if not isinstance(entry, dict):
            raise GridError(f"{key} must be a mapping or a string, got {type(entry).__name__}")
        allowed = {"name", "config", "class_path", "init_args", "trainer", "data", "paper_method", "categories",
                   "paper_protocol"}
        unknown = set(entry) - allowed
        if unknown:
            raise GridError(f"{key}: unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}")
        config = entry.get("config")
        class_path = entry.get("class_path")
        if config is None and class_path is None:
            raise GridError(f"{key} needs 'config' (a CLI config file) and/or 'class_path'")
        config_path = None
        if config is not None:
            config_path = _resolve_file(config, base_dir)
            if config_path is None:
                raise GridError(f"{key}: config file {config!r} not found (looked next to the grid file in "
                                f"{base_dir}, in the working directory and among the shipped configs)")
        if class_path is not None and (not isinstance(class_path, str) or "." not in class_path):
            raise GridError(f"{key}: class_path must be a dotted import path like 'pkg.module.Class'")
        name = entry.get("name") or (
            Path(config).stem if config is not None else _name_from_class_path(class_path)
        )
        specs.append(
            ModelSpec(
                name=str(name),
                config=config_path,
                class_path=class_path,
                init_args=_mapping(entry.get("init_args", {}), f"{key}.init_args"),
                trainer=_mapping(entry.get("trainer", {}), f"{key}.trainer"),
                data=_mapping(entry.get("data", {}), f"{key}.data"),
                paper_method=entry.get("paper_method"),
                categories=_parse_categories(entry["categories"], key) if "categories" in entry else None,
                paper_protocol=_flag(entry.get("paper_protocol", False), f"{key}.paper_protocol"),
            )
        )
    _check_unique([s.name for s in specs], f"{where}: models", "name")
    return tuple(specs)


def _resolve_file(value: Any, base_dir: Path) -> Path | None:
    """A config a grid names: relative to the grid file first, then as given, then a shipped config."""
    candidate = Path(str(value)).expanduser()
    if not candidate.is_absolute() and (base_dir / candidate).is_file():
        return base_dir / candidate
    return resolve_config_path(candidate)


def _parse_categories(value: Any, key: str) -> tuple[str | tuple[str, ...], ...]:
    if value is None:
        return ("all",)
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        raise GridError(f"{key}.categories must be 'all', a category name or a non-empty list")
    out: list[str | tuple[str, ...]] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and item and all(isinstance(c, str) for c in item):
            out.append(tuple(item))  # one unified model over this subset
        else:
            raise GridError(f"{key}.categories: each item must be a name or a list of names, got {item!r}")
    return tuple(out)


def _parse_datasets(value: Any, where: str) -> tuple[DatasetSpec, ...]:
    if value is None:
        # No dataset section: every model runs on the data section of its own config file.
        return (DatasetSpec(name="config", class_path=None),)
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: 'datasets' must be a non-empty list of dataset entries")
    specs: list[DatasetSpec] = []
    for i, entry in enumerate(value):
        key = f"{where}: datasets[{i}]"
        if not isinstance(entry, dict):
            raise GridError(f"{key} must be a mapping with class_path/init_args/categories")
        allowed = {"name", "class_path", "init_args", "categories", "paper_dataset", "synthetic"}
        unknown = set(entry) - allowed
        if unknown:
            raise GridError(f"{key}: unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}")
        class_path = entry.get("class_path")
        if class_path is not None and (not isinstance(class_path, str) or "." not in class_path):
            raise GridError(f"{key}: class_path must be a dotted import path like 'anomaly_bench.data.MVTecAD'")
        init_args = _mapping(entry.get("init_args", {}), f"{key}.init_args")
        if "category" in init_args:
            raise GridError(f"{key}.init_args: set categories with the 'categories' key, not init_args.category")
        name = entry.get("name") or (_name_from_class_path(class_path) if class_path else f"dataset{i}")
        specs.append(
            DatasetSpec(
                name=str(name),
                class_path=class_path,
                init_args=init_args,
                categories=_parse_categories(entry.get("categories"), key),
                paper_dataset=entry.get("paper_dataset")
                or (_name_from_class_path(class_path) if class_path else None),
                synthetic=None if entry.get("synthetic") is None else _flag(entry["synthetic"], f"{key}.synthetic"),
            )
        )
    _check_unique([s.name for s in specs], f"{where}: datasets", "name")
    return tuple(specs)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in value
    ):
        raise GridError(f"{where}: seeds must be an integer or a non-empty list of integers, got {value!r}")
    _check_unique([str(s) for s in value], f"{where}: seeds", "value")
    return tuple(value)


def _parse_wandb(value: Any, where: str, grid_name: str) -> WandbSpec | None:
    if value in (None, False):
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise GridError(f"{where}: wandb must be a mapping {{project, group, mode}} or true/false")
    mode = value.get("mode", "auto")
    if mode not in ("auto", "online", "offline", "disabled"):
        raise GridError(f"{where}: wandb.mode must be auto|online|offline|disabled, got {mode!r}")
    tags = value.get("tags") or []
    return WandbSpec(
        project=str(value.get("project", "anomaly_bench")),
        group=str(value.get("group") or grid_name),
        mode=mode,
        entity=value.get("entity"),
        tags=tuple(str(t) for t in tags),
    )


def _parse_devices(value: Any, where: str) -> str | tuple[int, ...]:
    if value in ("auto", "cpu"):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(value))  # "use N GPUs"
    if isinstance(value, list) and value and all(isinstance(d, int) for d in value):
        return tuple(value)
    raise GridError(f"{where}: devices must be 'auto', 'cpu', a GPU count or a list of GPU ids, got {value!r}")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise GridError(f"{where} must be true or false, got {value!r}")
    return value


def _check_unique(names: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise GridError(f"{where}: duplicate {what} {n!r}; each entry needs a distinct {what}")
        seen.add(n)


# ------------------------------------------------------------------------------------- expansion
def resolve_categories(categories: tuple[str | tuple[str, ...], ...], dataset: DatasetSpec
                       ) -> list[str | tuple[str, ...]]:
    """Expand ``each`` into the dataset's category names (known public datasets only)."""
    out: list[str | tuple[str, ...]] = []
    for c in categories:
        if c != EACH_WORD:
            out.append(c)
            continue
        cls = (dataset.class_path or "").rsplit(".", 1)[-1]
        known = KNOWN_CATEGORIES.get(cls) or KNOWN_CATEGORIES.get(dataset.paper_dataset or "")
        if not known:
            raise GridError(f"dataset {dataset.name!r}: 'each' needs a known dataset class "
                            f"({sorted(KNOWN_CATEGORIES)}); list the categories explicitly instead")
        out.extend(known)
    return out


def expand_grid(grid: GridConfig) -> list[Cell]:
    """Every (model, dataset, category, seed) combination, in a stable order."""
    cells = [
        Cell(model=m, dataset=d, category=c, seed=s)
        for m in grid.models
        for d in grid.datasets
        for c in resolve_categories(m.categories or d.categories, d)
        for s in grid.seeds
    ]
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise GridError(f"grid {grid.name}: cell ids collide after sanitising names: {dup}")
    return cells
