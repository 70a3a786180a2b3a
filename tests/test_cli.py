"""The spine end to end: CLI fit -> test -> predict, run directories, seeds, resume, DDP, loggers, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_bench.cli import CheckpointMismatchError, main
from anomaly_bench.data.io import DataError
from anomaly_bench.runs import RunDirError
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny.yaml")


def base_args(root: Path, results: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--data.init_args.root", str(root), "--trainer.default_root_dir", str(results),
            *extra]


def read_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {row["category"]: {k: float(v) for k, v in row.items() if k != "category" and v not in ("", None)}
            for row in rows}


def latest(results: Path) -> Path:
    return (results / "TinyModel" / "MVTecAD" / "all" / "latest").resolve()


def run_cli_subprocess(args: list[str], timeout: int = 300,
                       env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "anomaly_bench.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_fit_then_test_writes_a_complete_run_directory(synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    main(["fit", *base_args(synth_mvtec, results)])
    run = latest(results)
    assert run.name == "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    info = json.loads((run / "run_info_fit.json").read_text())
    assert set(info["versions"]) >= {"torch", "lightning", "timm", "diffusers"}
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "git_sha" in info and info["subcommand"] == "fit"

    main(["test", *base_args(synth_mvtec, results), "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert str(run) in out and "image_auroc" in out  # run dir and metrics table printed
    metrics = read_metrics(run)
    assert set(metrics) == {"bottle", "carpet", "mean"}
    # the stats model separates synthetic defects from normals far above chance
    assert metrics["mean"]["image_auroc"] > 0.75, metrics
    assert metrics["mean"]["pixel_auroc"] > 0.75, metrics
    assert json.loads((run / "metrics.json").read_text())
    with (run / "scores.csv").open() as handle:
        scores = list(csv.DictReader(handle))
    test_images = [p for p in synth_mvtec.glob("*/test/*/*.png")]
    assert len(scores) == len(test_images)
    check_scores_file(run, scores)
    heatmaps = list((run / "heatmaps").rglob("*.png"))
    assert heatmaps and len(heatmaps) <= 2 * 8  # bounded per category (default 8)

    # a second fit makes a new version; `latest` follows it
    main(["fit", *base_args(synth_mvtec, results, "--trainer.max_epochs", "1")])
    assert latest(results).name == "version_1"


def check_scores_file(run: Path, rows: list[dict[str, str]]) -> None:
    """scores.csv's verdicts, thresholds, normalised scores and masks follow from the checkpoint's thresholds."""
    import cv2

    from anomaly_bench.metrics.thresholds import Thresholds
    from anomaly_bench.models.base import CHECKPOINT_KEY

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    thresholds = {c: Thresholds.from_dict(t) for c, t in checkpoint[CHECKPOINT_KEY]["thresholds"].items()}
    assert set(thresholds) == {"all", "bottle", "carpet"}
    flagged: dict[int, list[float]] = {0: [], 1: []}
    verdicts: dict[int, list[int]] = {0: [], 1: []}
    for row in rows:
        chosen = thresholds[row["category"]]  # each image's own category, not the pooled entry
        score, label = float(row["pred_score"]), int(row["label"])
        assert label == (0 if row["defect"] == "good" else 1), row
        assert float(row["image_threshold"]) == pytest.approx(chosen.image)
        assert int(row["pred_label"]) == int(score >= chosen.image), row
        assert float(row["normalized_score"]) == pytest.approx(float(chosen.normalised_image_score(score)))
        assert float(row["map_max"]) >= float(row["map_mean"])
        mask = cv2.imread(str(run / row["mask_file"]), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.shape == (64, 64), row["mask_file"]  # the image's native size
        assert set(np.unique(mask).tolist()) <= {0, 255}
        if float(row["map_max"]) < chosen.pixel:  # nothing in the map reaches the pixel threshold
            assert not mask.any(), row
        flagged[label].append(float((mask > 0).mean()))
        verdicts[label].append(int(row["pred_label"]))
    # thresholds fitted on normals flag anomalies (and their pixels) far more often than normals
    assert np.mean(verdicts[1]) > np.mean(verdicts[0]) + 0.3, verdicts
    assert np.mean(flagged[1]) > 2 * np.mean(flagged[0]), flagged


def test_short_class_names_and_overrides(synth_mvtec: Path, tmp_path: Path) -> None:
    import tests.helpers.tiny_model  # noqa: F401  (registers TinyModel as an AnomalyModule subclass)

    results = tmp_path / "results"
    main(["fit", "--model", "TinyModel", "--data", "MVTecAD", "--data.root", str(synth_mvtec),
          "--data.category", "bottle", "--data.image_size", "32", "--data.num_workers", "0",
          "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(results)])
    run = (results / "TinyModel" / "MVTecAD" / "bottle" / "latest").resolve()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_help_lists_models_and_datamodules(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("MVTecAD", "VisA", "GoodsAD", "MVTecLOCO", "MPDD", "Folder", "synth", "benchmark", "evaluate"):
        assert name in out, name


def test_print_config_resolves_the_yaml(synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(synth_mvtec, tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: tests.helpers.tiny_model.TinyModel" in out
    assert "seed_everything: 7" in out


def test_same_seed_gives_identical_metrics(synth_mvtec: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        results = tmp_path / name
        args = base_args(synth_mvtec, results, "--model.init_args.mode", "learned", "--trainer.deterministic",
                         "true", "--model.init_args.visualizer", "false")
        main(["fit", *args])
        main(["test", *args, "--ckpt_path", "last"])
        runs.append(read_metrics(latest(results)))
    assert runs[0] == runs[1]


def test_resume_after_crash_equals_uninterrupted_run(synth_mvtec: Path, tmp_path: Path) -> None:
    common = ["--model.init_args.mode", "learned", "--model.init_args.visualizer", "false",
              "--trainer.deterministic", "true", "--trainer.max_epochs", "3"]
    straight = tmp_path / "straight"
    main(["fit", *base_args(synth_mvtec, straight, *common)])
    main(["test", *base_args(synth_mvtec, straight, *common), "--ckpt_path", "last"])

    crashed = tmp_path / "crashed"
    killed = run_cli_subprocess(["fit", *base_args(synth_mvtec, crashed, *common),
                                 "--trainer.callbacks+=tests.helpers.tiny_model.KillAtEpoch",
                                 "--trainer.callbacks.epoch=1"])
    assert killed.returncode == 3, killed.stderr[-2000:]
    ckpt = torch.load(latest(crashed) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0  # the crash happened after epoch 0 was saved
    main(["fit", *base_args(synth_mvtec, crashed, *common), "--ckpt_path", "last"])
    main(["test", *base_args(synth_mvtec, crashed, *common), "--ckpt_path", "last"])
    assert latest(crashed).name == "version_0"  # resumed in place
    assert read_metrics(latest(crashed)) == read_metrics(latest(straight))


def test_bf16_mixed_on_cpu(synth_mvtec: Path, tmp_path: Path) -> None:
    args = base_args(synth_mvtec, tmp_path, "--trainer.precision", "bf16-mixed", "--model.init_args.visualizer",
                     "false")
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "last"])
    config = (latest(tmp_path) / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config  # the Trainer got what the user asked for
    metrics = read_metrics(latest(tmp_path))
    assert metrics["mean"]["image_auroc"] > 0.75, metrics


def test_ddp_two_cpu_processes_match_one_process(synth_mvtec: Path, tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["--trainer.max_epochs", "1", "--model.init_args.visualizer", "false"]
    main(["fit", *base_args(synth_mvtec, single, *common)])
    main(["test", *base_args(synth_mvtec, single, *common), "--ckpt_path", "last"])
    ddp_flags = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    for sub in (["fit"], ["test", "--ckpt_path", "last"]):
        proc = run_cli_subprocess([sub[0], *base_args(synth_mvtec, ddp, *common, *ddp_flags), *sub[1:]], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_metrics(latest(single)), read_metrics(latest(ddp))
    assert one.keys() == two.keys()
    for category in one:
        for metric, value in one[category].items():
            assert two[category][metric] == pytest.approx(value, abs=1e-6), (category, metric)


def test_predict_on_a_folder_writes_scores_and_heatmaps(synth_mvtec: Path, tmp_path: Path) -> None:
    main(["fit", *base_args(synth_mvtec, tmp_path, "--trainer.max_epochs", "1")])
    folder = synth_mvtec / "bottle" / "test" / next(
        d.name for d in (synth_mvtec / "bottle" / "test").iterdir() if d.name != "good")
    main(["predict", *base_args(synth_mvtec, tmp_path), "--ckpt_path", "last",
          "--data.init_args.predict_path", str(folder)])
    run = latest(tmp_path)
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(folder.glob("*.png")))
    assert all(row["label"] == "-1" for row in rows)
    assert len(list((run / "heatmaps").rglob("*.png"))) == len(rows)


def test_predict_keeps_the_outputs_of_images_that_share_a_file_name(synth_mvtec: Path, tmp_path: Path) -> None:
    import shutil

    main(["fit", *base_args(synth_mvtec, tmp_path, "--trainer.max_epochs", "1")])
    test_dir = synth_mvtec / "bottle" / "test"
    defect = next(d for d in test_dir.iterdir() if d.name != "good")
    folder = tmp_path / "to_score"
    for sub, source in (("a", test_dir / "good"), ("b", defect)):  # a/000.png (normal), b/000.png (defect)
        (folder / sub).mkdir(parents=True)
        shutil.copy(sorted(source.glob("*.png"))[0], folder / sub / "000.png")
    main(["predict", *base_args(synth_mvtec, tmp_path), "--ckpt_path", "last",
          "--data.init_args.predict_path", str(folder)])
    run = latest(tmp_path)
    rows = {Path(r["path"]).parent.name: r for r in csv.DictReader((run / "predictions.csv").open())}
    assert set(rows) == {"a", "b"} and rows["a"]["mask_file"] != rows["b"]["mask_file"]
    assert all((run / r["mask_file"]).is_file() for r in rows.values())
    assert len(list((run / "heatmaps" / "predict").rglob("*.png"))) == 2
    # each mask is its own image's: the defect image's flags more pixels than the normal one's
    import cv2

    flagged = {k: (cv2.imread(str(run / r["mask_file"]), cv2.IMREAD_GRAYSCALE) > 0).mean() for k, r in rows.items()}
    assert flagged["b"] > flagged["a"], flagged
    # a second predict on one image: its outputs replace the first run's, none is left unlisted
    main(["predict", *base_args(synth_mvtec, tmp_path), "--ckpt_path", "last",
          "--data.init_args.predict_path", str(folder / "a" / "000.png")])
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    masks = sorted(str(p.relative_to(run)) for p in (run / "masks" / "predict").rglob("*.png"))
    assert masks == [rows[0]["mask_file"]] and len(rows) == 1
    assert len(list((run / "heatmaps" / "predict").rglob("*.png"))) == 1


def test_wandb_offline_writes_run_files(synth_mvtec: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    args = base_args(synth_mvtec, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger",
                     "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.project", "anomaly-bench-test")
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "last"])
    run = latest(tmp_path)
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert offline_runs, list(run.rglob("*"))[:20]
    assert any(p.suffix == ".wandb" for r in offline_runs for p in r.iterdir())


# ------------------------------------------------------------------------------ bad input
def test_unknown_config_key_names_the_key(synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base_args(synth_mvtec, tmp_path, "--model.init_args.no_such_option", "3")])
    assert exit_info.value.code != 0
    assert "no_such_option" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--model.init_args.coreset_ration", "0.1",
     "model.init_args.coreset_ration: 'coreset_ration' is not an option of PatchCore; did you mean 'coreset_ratio'"),
    ("--data.init_args.batchsize", "4",
     "data.init_args.batchsize: 'batchsize' is not an option of MVTecAD; did you mean 'batch_size'"),
    ("--model.init_args.coreset_ratio", "abc", "model.init_args.coreset_ratio (PatchCore): expected float, got abc"),
    ("--data.init_args.image_size", "sixty",
     "data.init_args.image_size (MVTecAD): expected int, Sequence[int], got sixty"),
    ("--trainer.max_epochs", "many", "trainer.max_epochs: expected int (or null), got 'many'"),
])
def test_a_config_mistake_is_a_short_message_naming_the_key(tmp_path: Path, capsys, flag, value, expected) -> None:
    config = str(REPO_ROOT / "configs" / "demo" / "patchcore.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("anomaly-bench: error: ") and expected in lines[0], err
    assert len(lines) == 2 and "--help" in lines[1] and "usage:" not in err  # no 50-line usage first


def test_an_option_before_a_later_config_is_pointed_out(tmp_path: Path, capsys) -> None:
    from anomaly_bench.cli import options_before_a_config

    config = str(REPO_ROOT / "configs" / "demo" / "crad.yaml")
    assert options_before_a_config(["fit", "--config", config, "--trainer.max_epochs", "1"]) == []
    assert options_before_a_config(["fit", "--trainer.max_epochs", "1", "--data.init_args.root=x", "--config", config]) \
        == ["--trainer.max_epochs", "--data.init_args.root"]
    with pytest.raises(SystemExit):
        main(["fit", "--trainer.max_epochs", "7", "--config", config, "--trainer.default_root_dir", str(tmp_path),
              "--print_config"])
    captured = capsys.readouterr()
    assert "note: --trainer.max_epochs come(s) before a --config, whose values replace them" in captured.err
    assert "max_epochs: 7\n" not in captured.out  # what the note warns about: the config's value (15) won


def test_wrong_type_names_the_key(synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *base_args(synth_mvtec, tmp_path, "--trainer.max_epochs", "many")])
    assert "max_epochs" in capsys.readouterr().err


def test_missing_dataset_root_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        main(["fit", *base_args(missing, tmp_path)])


def test_missing_dataset_root_from_the_console_exits_2(tmp_path: Path) -> None:
    proc = run_cli_subprocess(["fit", *base_args(tmp_path / "nowhere", tmp_path)])
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_ckpt_last_without_a_run_is_a_clear_error(synth_mvtec: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="anomaly-bench fit"):
        main(["test", *base_args(synth_mvtec, tmp_path / "empty"), "--ckpt_path", "last"])


def test_checkpoint_of_another_model_is_refused(synth_mvtec: Path, tmp_path: Path) -> None:
    main(["fit", *base_args(synth_mvtec, tmp_path, "--trainer.max_epochs", "1")])
    ckpt = latest(tmp_path) / "checkpoints" / "last.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["anomaly_bench"]["model_class"] = "anomaly_bench.models.GLAD"
    other = tmp_path / "other.ckpt"
    torch.save(payload, other)
    with pytest.raises(CheckpointMismatchError, match="GLAD"):
        main(["test", *base_args(synth_mvtec, tmp_path), "--ckpt_path", str(other)])


def test_missing_checkpoint_file_is_a_clear_error(synth_mvtec: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="nope.ckpt"):
        main(["test", *base_args(synth_mvtec, tmp_path), "--ckpt_path", str(tmp_path / "nope.ckpt")])
