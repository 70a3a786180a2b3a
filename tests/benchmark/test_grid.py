"""Grid parsing, expansion and per-cell config building."""

from pathlib import Path

import pytest
import yaml

from anomaly_bench.benchmark.cell_config import build_cell_config, flatten
from anomaly_bench.benchmark.grid import GridError, expand_grid, load_grid, parse_grid
from tests.benchmark.conftest import grid_dict


def test_expansion_is_the_cartesian_product_with_stable_ids(tmp_path):
    raw = grid_dict(tmp_path)
    raw["datasets"].append({"name": "other", "class_path": "anomaly_bench.data.VisA",
                            "categories": ["pcb1", "pcb2", ["candle", "fryum"]]})
    cells = expand_grid(parse_grid(raw))
    assert len(cells) == 2 * (1 + 3) * 2  # models x (categories of both datasets) x seeds
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "good/synth/all/seed0"
    assert "okay/other/pcb2/seed1" in ids and "good/other/candle+fryum/seed0" in ids
    # same grid -> same ids, same order (finished cells are found by id)
    assert ids == [c.id for c in expand_grid(parse_grid(raw))]
    by_id = {c.id: c for c in cells}
    assert by_id["good/synth/all/seed0"].setting == "unified"
    assert by_id["good/other/pcb1/seed0"].setting == "separate"
    assert by_id["good/other/candle+fryum/seed0"].category_arg == ["candle", "fryum"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": []}, "models"),
        ({"models": [{"name": "x"}]}, "config"),
        ({"models": [{"class_path": "a.B", "bogus": 1}]}, "bogus"),
        ({"seeds": ["zero"]}, "seeds"),
        ({"seeds": [1, 1]}, "duplicate"),
        ({"surprise": 1}, "surprise"),
        ({"models": [{"class_path": "a.B"}, {"class_path": "c.B"}]}, "duplicate name 'B'"),
        ({"models": [{"config": "no/such/file.yaml"}]}, "no/such/file.yaml"),
        ({"wandb": {"mode": "sometimes"}}, "wandb.mode"),
        ({"devices": "tpu"}, "devices"),
        ({"launcher": "slurm"}, "launcher must be one of"),
        ({"ray": {"gpus": 1}}, r"ray: unknown keys \['gpus'\]"),
        ({"ray": {"max_retries": -1}}, "ray.max_retries"),
        ({"ray": {"cpus_per_cell": "two"}}, "ray.cpus_per_cell"),
        ({"lease_s": 0}, "lease_s"),
    ],
)
def test_bad_grids_are_rejected_with_the_key_named(tmp_path, change, message):
    raw = grid_dict(tmp_path, **change)
    with pytest.raises(GridError, match=message):
        parse_grid(raw)


def test_category_in_dataset_init_args_is_refused(tmp_path):
    raw = grid_dict(tmp_path)
    raw["datasets"][0]["init_args"]["category"] = "bottle"
    with pytest.raises(GridError, match="categories"):
        parse_grid(raw)


def test_load_grid_names_the_missing_file(tmp_path):
    with pytest.raises(GridError, match="missing.yaml"):
        load_grid(tmp_path / "missing.yaml")


def test_cell_config_merges_model_config_grid_and_cell(tmp_path):
    model_cfg = tmp_path / "m.yaml"
    model_cfg.write_text(yaml.safe_dump({
        "seed_everything": 123,
        "trainer": {"max_epochs": 50, "accelerator": "auto", "logger": False},
        "model": {"class_path": "pkg.Model", "init_args": {"width": 8, "depth": 2}},
        "data": {"class_path": "anomaly_bench.data.Folder",
                 "init_args": {"root": "x", "image_size": 96, "batch_size": 4, "normal_dir": "good"}},
    }))
    raw = grid_dict(tmp_path, models=[{"name": "m", "config": str(model_cfg), "init_args": {"depth": 3},
                                       "trainer": {"max_epochs": 2}}],
                    trainer={"max_epochs": 1, "limit_val_batches": 0})
    grid = parse_grid(raw)
    cell = expand_grid(grid)[1]
    cfg = build_cell_config(grid, cell, tmp_path / "run")
    assert cfg["seed_everything"] == 1
    assert cfg["model"] == {"class_path": "pkg.Model", "init_args": {"width": 8, "depth": 3}}
    # model entry trainer > grid trainer > model config trainer
    assert cfg["trainer"]["max_epochs"] == 2 and cfg["trainer"]["limit_val_batches"] == 0
    assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "run")
    # a different datamodule class keeps only the args every datamodule shares
    assert cfg["data"]["class_path"] == "anomaly_bench.data.MVTecAD"
    assert cfg["data"]["init_args"] == {"image_size": 96, "batch_size": 4, "root": "data/x", "category": "all"}


def test_class_path_override_replaces_init_args_of_the_config_model(tmp_path):
    model_cfg = tmp_path / "m.yaml"
    model_cfg.write_text(yaml.safe_dump({"model": {"class_path": "pkg.A", "init_args": {"a": 1}},
                                         "data": {"class_path": "x.D", "init_args": {"root": "r"}}}))
    raw = grid_dict(tmp_path, models=[{"name": "b", "config": str(model_cfg), "class_path": "pkg.B",
                                       "init_args": {"b": 2}}], datasets=None)
    grid = parse_grid(raw)
    (cell,) = [c for c in expand_grid(grid) if c.seed == 0]
    cfg = build_cell_config(grid, cell, tmp_path / "run")
    assert cfg["model"] == {"class_path": "pkg.B", "init_args": {"b": 2}}
    assert cfg["data"] == {"class_path": "x.D", "init_args": {"root": "r", "category": "all"}}  # config's own data


def test_wandb_logger_is_grouped_named_and_offline_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    grid = parse_grid(grid_dict(tmp_path, wandb={"project": "p"}))
    cell = expand_grid(grid)[0]
    logger = build_cell_config(grid, cell, tmp_path / "run")["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    init = logger["init_args"]
    assert init["group"] == "testgrid" and init["name"] == cell.id and init["mode"] == "offline"
    assert init["config"]["model.init_args.quality"] == 0.9
    assert init["resume"] == "allow" and len(init["id"]) == 16  # fit and test share one W&B run
    other = build_cell_config(grid, expand_grid(grid)[1], tmp_path / "run")["trainer"]["logger"]["init_args"]
    assert other["id"] != init["id"]
    assert init["config"]["bench.seed"] == 0 and init["config"]["bench.setting"] == "unified"


def test_flatten_joins_keys_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": "[1, 2]", "e": None}


def test_shipped_grids_parse():
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        # model config files may be written later by other engineers: check structure, not files
        for m in raw["models"]:
            m.pop("config", None)
            m.setdefault("class_path", "placeholder.Model")
        grid = parse_grid(raw, path=path)
        assert expand_grid(grid), path


def test_model_level_categories_and_each(tmp_path):
    raw = grid_dict(tmp_path, seeds=[0])
    raw["models"][1]["categories"] = "each"  # a separate-setting method next to a unified one
    grid = parse_grid(raw)
    cells = expand_grid(grid)
    good = [c for c in cells if c.model.name == "good"]
    okay = [c for c in cells if c.model.name == "okay"]
    assert [c.category for c in good] == ["all"]
    assert len(okay) == 15 and okay[7].id == "okay/synth/metal_nut/seed0" and okay[0].setting == "separate"
    raw["datasets"][0]["class_path"] = "my.Own"
    with pytest.raises(GridError, match="each"):
        expand_grid(parse_grid(raw))


def test_launcher_and_ray_sections(tmp_path):
    grid = parse_grid(grid_dict(tmp_path))
    assert grid.launcher == "local" and grid.ray.address is None and grid.ray.gpus_per_cell is None
    assert grid.lease_s == 60
    grid = parse_grid(grid_dict(tmp_path, launcher="ray", lease_s=5, ray={
        "address": "auto", "cpus_per_cell": 4, "gpus_per_cell": "auto", "memory_gb_per_cell": 16,
        "max_retries": 0, "init_args": {"num_cpus": 8}}))
    assert grid.launcher == "ray" and grid.lease_s == 5.0
    assert (grid.ray.address, grid.ray.cpus_per_cell, grid.ray.gpus_per_cell) == ("auto", 4.0, None)
    assert grid.ray.memory_gb_per_cell == 16.0 and grid.ray.max_retries == 0
    assert grid.ray.init_args == {"num_cpus": 8}
