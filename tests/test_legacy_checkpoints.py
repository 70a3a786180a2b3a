"""Version 0.1 runs keep working: its configs upgrade (on the fly or with `upgrade-config`) and its
checkpoints load into today's classes and give the same maps and scores (issue 14)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomaly_bench import compat
from anomaly_bench.cli import main
from tests.conftest import REPO_ROOT

LEGACY = REPO_ROOT / "tests" / "fixtures" / "legacy_v0_1"
# GLAD and PatchDiffGRAD are checked in their own test files (tests/models/test_*_legacy.py)
METHODS = ["crad", "bigridgrad"]


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_legacy(name: str):
    """Today's model built from the upgraded 0.1 config, with the 0.1 checkpoint loaded into it."""
    config = yaml.safe_load((LEGACY / f"{name}.yaml").read_text())
    notes = compat.upgrade_config(config, lambda p: _class(p))
    init_args = dict(config["model"]["init_args"])
    init_args["image_size"] = config["data"]["init_args"]["image_size"]  # the CLI's link
    model = _class(config["model"]["class_path"])(**init_args)
    model.configure_callbacks = lambda: []
    checkpoint = torch.load(LEGACY / f"{name}.ckpt", map_location="cpu", weights_only=True)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval(), notes


@pytest.mark.parametrize("name", METHODS)
def test_a_0_1_checkpoint_gives_the_same_outputs(name: str) -> None:
    model, notes = load_legacy(name)
    assert any("deprecated" in note for note in notes)  # old names were met and converted
    expected = np.load(LEGACY / "expected_outputs.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(expected[f"{name}_images"]))
    np.testing.assert_allclose(out.anomaly_map.numpy(), expected[f"{name}_map"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.pred_score.numpy(), expected[f"{name}_score"], rtol=1e-5, atol=1e-6)


def test_upgrade_config_writes_todays_names(tmp_path: Path, capsys) -> None:
    new = tmp_path / "crad.yaml"
    assert main(["upgrade-config", str(LEGACY / "crad.yaml"), str(new)]) == 0
    config = yaml.safe_load(new.read_text())
    args = config["model"]["init_args"]
    assert args["blur_anomaly_map"] is True and "anomaly_map_blur" not in args
    assert args["image_score"] == "blur_pool_max"
    assert "evaluator" not in args and "visualizer" not in args and "image_size" not in args
    assert "renamed to model.init_args.blur_anomaly_map" in capsys.readouterr().out
    assert (LEGACY / "crad.yaml").read_text().count("anomaly_map_blur") == 1  # the original is untouched


def test_upgrade_config_converts_a_checkpoint(tmp_path: Path) -> None:
    new = tmp_path / "bigridgrad.ckpt"
    assert main(["upgrade-config", str(LEGACY / "bigridgrad.ckpt"), str(new)]) == 0
    checkpoint = torch.load(new, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["lr"] == 0.01 and "net_lr" not in hparams and hparams["image_score"] == "blur_pool_max"
    assert checkpoint["anomaly_bench"]["version"] != "0.1.0"


def test_old_config_and_checkpoint_run_through_the_cli(tmp_path: Path, capsys) -> None:
    """`anomaly-bench test` with the 0.1 config and checkpoint: deprecation lines, then real metrics."""
    from anomaly_bench.data.synthetic import write_dataset

    root = tmp_path / "mvtec"
    write_dataset("mvtec", root, categories=["bottle"], size=32, seed=3, train=2, test_good=3, per_defect=2)
    main(["test", "--config", str(LEGACY / "crad.yaml"), "--ckpt_path", str(LEGACY / "crad.ckpt"),
          "--data.init_args.root", str(root), "--trainer.default_root_dir", str(tmp_path / "results"),
          "--run_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "deprecated" in err and "blur_anomaly_map" in err
    import csv
    import math

    rows = {r["category"]: r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open())}
    assert set(rows) == {"bottle", "mean"}
    test_images = sorted((root / "bottle" / "test").glob("*/*.png"))
    anomalous = [p for p in test_images if p.parent.name != "good"]
    assert int(float(rows["bottle"]["num_images"])) == len(test_images) == 3 + len(anomalous)
    assert int(float(rows["bottle"]["num_anomalous"])) == len(anomalous) > 0
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):  # computed, not left empty or NaN
        value = float(rows["bottle"][key])
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (key, value)
    with (tmp_path / "run" / "scores.csv").open() as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == len(test_images) and all(math.isfinite(float(r["pred_score"])) for r in scores)


def test_upgrade_config_names_what_it_refuses_and_takes_shipped_names(tmp_path: Path, monkeypatch) -> None:
    from anomaly_bench.cli import ConfigError

    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"notes.ckpt is not a readable anomaly_bench checkpoint"):
        main(["upgrade-config", str(garbage), str(tmp_path / "out.ckpt")])
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"neither a config \(.yaml\) nor a checkpoint"):
        main(["upgrade-config", str(binary), str(tmp_path / "out.yaml")])
    with pytest.raises(ConfigError, match=r"is a checkpoint; NEW .*out.yaml should end in .ckpt"):
        main(["upgrade-config", str(LEGACY / "crad.ckpt"), str(tmp_path / "out.yaml")])
    with pytest.raises(ConfigError, match=r"is a config; NEW .*out.ckpt should end in .yaml"):
        main(["upgrade-config", str(LEGACY / "crad.yaml"), str(tmp_path / "out.ckpt")])
    assert not list(tmp_path.glob("out.*"))
    monkeypatch.chdir(tmp_path)
    assert main(["upgrade-config", "demo/crad", "crad.yaml"]) == 0
    assert "class_path: anomaly_bench.models.CRAD" in (tmp_path / "crad.yaml").read_text()


def test_conflicting_old_and_new_names_are_refused() -> None:
    from anomaly_bench.models.crad.lightning_model import CRAD

    with pytest.raises(compat.ConfigUpgradeError, match="blur_anomaly_map"):
        compat.upgrade_init_args(CRAD, {"anomaly_map_blur": True, "blur_anomaly_map": False})


@pytest.mark.parametrize("name", METHODS + ["glad"])
def test_load_from_checkpoint_upgrades_old_option_names_before_building(name: str) -> None:
    """Lightning builds the class from the stored hyper-parameters: the 0.1 names must be upgraded first."""
    checkpoint = torch.load(LEGACY / f"{name}.ckpt", map_location="cpu", weights_only=True)
    model = _class(checkpoint["anomaly_bench"]["model_class"]).load_from_checkpoint(LEGACY / f"{name}.ckpt")
    expected = np.load(LEGACY / "expected_outputs.npz")
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(expected[f"{name}_images"]))
    np.testing.assert_allclose(out.pred_score.numpy(), expected[f"{name}_score"], rtol=1e-5, atol=1e-6)
