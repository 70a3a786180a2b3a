"""Nothing silently wrong, nothing lost (issue 17), and the first hour (issue 18), through the real CLI.

Each test names the case of the issue it closes. The spine's tiny model keeps every run to seconds.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

from anomaly_bench import runs
from anomaly_bench.cli import CheckpointMismatchError, ConfigError, main
from anomaly_bench.data.io import DataError
from anomaly_bench.runs import RunDirError
from tests.conftest import REPO_ROOT
from tests.test_cli import TINY, base_args, latest, read_metrics, run_cli_subprocess

LEARNED = ["--model.init_args.mode", "learned", "--trainer.max_epochs", "2"]


def _versions(results: Path) -> list[str]:
    exp = results / "TinyModel" / "MVTecAD" / "all"
    return sorted(p.name for p in exp.iterdir() if p.name.startswith("version_")) if exp.is_dir() else []


# ------------------------------------------------------------------ issue 18.1: no silent random model
def test_test_without_a_checkpoint_is_refused_and_leaves_no_run(synth_mvtec: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="--ckpt_path last"):
        main(["test", *base_args(synth_mvtec, tmp_path)])
    with pytest.raises(RunDirError, match="--ckpt_path last"):
        main(["predict", *base_args(synth_mvtec, tmp_path)])
    assert _versions(tmp_path) == []


def test_a_failed_fit_is_marked_and_never_chosen_by_last(synth_mvtec: Path, tmp_path: Path) -> None:
    main(["fit", *base_args(synth_mvtec, tmp_path)])
    with pytest.raises(RuntimeError, match="simulated failure"):
        main(["fit", *base_args(synth_mvtec, tmp_path, "--trainer.callbacks+=tests.helpers.tiny_model.FailAtEpoch")])
    failed = tmp_path / "TinyModel" / "MVTecAD" / "all" / "version_1"
    assert (failed / runs.FAILED_MARKER).is_file() and "simulated failure" in (failed / "FAILED").read_text()
    assert latest(tmp_path).name == "version_0"  # `latest` follows runs with a checkpoint only
    main(["test", *base_args(synth_mvtec, tmp_path), "--ckpt_path", "last"])
    assert (tmp_path / "TinyModel" / "MVTecAD" / "all" / "version_0" / "metrics.json").is_file()
    assert not (failed / "metrics.json").exists()


def test_a_config_that_fails_to_build_leaves_no_run_directory(synth_mvtec: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode"):
        main(["fit", *base_args(synth_mvtec, tmp_path, "--model.init_args.mode", "telepathic")])
    assert _versions(tmp_path) == []


# ------------------------------------------------------------- issue 17.2: command line vs checkpoint
def test_the_command_line_wins_over_the_checkpoint_and_a_shape_conflict_is_named(
        synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    main(["fit", *base_args(synth_mvtec, tmp_path, *LEARNED)])
    ckpt = str(latest(tmp_path) / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    main(["test", *base_args(synth_mvtec, tmp_path, *LEARNED, "--model.init_args.noise", "0.5"), "--ckpt_path", ckpt])
    out = capsys.readouterr().out
    assert "model.init_args.noise: checkpoint 0.2, config 0.5" in out
    assert "noise: 0.5" in (latest(tmp_path) / "config_test.yaml").read_text()
    with pytest.raises(CheckpointMismatchError, match="hidden: checkpoint 8, config 4"):
        main(["test", *base_args(synth_mvtec, tmp_path, *LEARNED, "--model.init_args.hidden", "4"), "--ckpt_path",
              ckpt])


def test_an_override_of_a_model_with_a_non_tensor_state_entry_is_checked_not_crashed(
        synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    """GLAD's state dict holds a dict (its per-category tables): the shape check must skip it."""
    table_model = ["--model", "tests.helpers.tiny_model.TinyModelWithTable", "--model.init_args.mode", "learned",
                   "--trainer.max_epochs", "1"]
    main(["fit", *base_args(synth_mvtec, tmp_path, *table_model)])
    run = (tmp_path / "TinyModelWithTable" / "MVTecAD" / "all" / "latest").resolve()
    capsys.readouterr()
    main(["test", *base_args(synth_mvtec, tmp_path, *table_model, "--model.init_args.noise", "0.5"),
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "model.init_args.noise: checkpoint 0.2, config 0.5" in capsys.readouterr().out
    assert (run / "metrics.json").is_file()
    with pytest.raises(CheckpointMismatchError, match="hidden: checkpoint 8, config 4"):
        main(["test", *base_args(synth_mvtec, tmp_path, *table_model, "--model.init_args.hidden", "4"),
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])


def test_garbage_and_truncated_checkpoints_are_one_line_errors(synth_mvtec: Path, tmp_path: Path) -> None:
    main(["fit", *base_args(synth_mvtec, tmp_path)])
    real = (latest(tmp_path) / "checkpoints" / "last.ckpt").read_bytes()
    garbage, truncated = tmp_path / "garbage.ckpt", tmp_path / "truncated.ckpt"
    garbage.write_bytes(bytes(range(256)) * 4)
    truncated.write_bytes(real[: len(real) // 2])
    config_file, empty = tmp_path / "config.ckpt", tmp_path / "empty.ckpt"
    config_file.write_text("model:\n  class_path: anomaly_bench.models.CRAD\n")
    empty.write_bytes(b"")
    expected = {garbage: f"{garbage} is not a PyTorch checkpoint: it is another kind of file",
                truncated: f"cannot read checkpoint {truncated}",
                config_file: f"{config_file} is not a PyTorch checkpoint: it is a text file \\(a config\\?\\)",
                empty: f"{empty} is not a PyTorch checkpoint: it is empty"}
    for bad, message in expected.items():
        with pytest.raises(CheckpointMismatchError, match=message) as info:
            main(["test", *base_args(synth_mvtec, tmp_path), "--ckpt_path", str(bad)])
        assert "\n" not in str(info.value)
    run = latest(tmp_path)
    with pytest.raises(runs.RunDirError, match=f"is a folder; did you mean {run / 'checkpoints' / 'last.ckpt'}"):
        main(["test", *base_args(synth_mvtec, tmp_path), "--ckpt_path", str(run)])


# ------------------------------------------------------------------- issue 17.3: resume keeps curves
def test_resume_appends_to_the_training_curves(synth_mvtec: Path, tmp_path: Path) -> None:
    common = [*LEARNED[:2], "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "1"]
    killed = run_cli_subprocess(["fit", *base_args(synth_mvtec, tmp_path, *common),
                                 "--trainer.callbacks+=tests.helpers.tiny_model.KillAtEpoch",
                                 "--trainer.callbacks.epoch=2"])
    assert killed.returncode == 3, killed.stderr[-2000:]
    log = latest(tmp_path) / "logs" / "fit" / "metrics.csv"
    with log.open() as handle:
        before = {int(float(r["epoch"])) for r in csv.DictReader(handle) if r.get("epoch")}
    assert before == {0, 1}
    main(["fit", *base_args(synth_mvtec, tmp_path, *common), "--ckpt_path", "last"])
    with log.open() as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(float(r["epoch"])) for r in rows if r.get("epoch")]
    assert set(epochs) == {0, 1, 2}, epochs  # epochs 0-1 kept, epoch 2 appended
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)


# ---------------------------------------------------------------- issue 17.4: atomic checkpoints
KILL_MID_WRITE = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
from lightning.pytorch import Trainer
from anomaly_bench.callbacks.checkpoint import BestAndLastCheckpoint
from tests.helpers.tiny_model import TinyModel
from tests.test_cli_reliability import tiny_loader

def slow_save(checkpoint, filepath):
    import io
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    with open(filepath, "wb") as handle:
        for start in range(0, len(data), 4096):
            handle.write(data[start:start + 4096]); handle.flush()
            if start == 4096:
                print("WRITING", flush=True)
            time.sleep(0.05)

class SlowFromEpoch1(BestAndLastCheckpoint):
    def _save_checkpoint(self, trainer, filepath):
        if trainer.current_epoch >= 1:
            import lightning.fabric.plugins.io.torch_io as torch_io
            torch_io._atomic_save = slow_save  # what Lightning's TorchCheckpointIO calls
        super()._save_checkpoint(trainer, filepath)

model = TinyModel(mode="learned", hidden=64)
model.configure_callbacks = lambda: []
Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SlowFromEpoch1(dirpath={ckpt_dir!r}, monitor=None)]).fit(model, tiny_loader())
"""


def tiny_loader():
    from torch.utils.data import DataLoader

    from anomaly_bench.types import collate_items

    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 16, 16, generator=g), "label": 0, "mask": torch.zeros(16, 16),
              "orig_size": (16, 16), "category": "c", "defect": "good", "path": f"{i}.png"} for i in range(8)]
    return DataLoader(items, batch_size=4, collate_fn=collate_items)


def test_a_writer_killed_mid_write_never_leaves_a_truncated_checkpoint(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    other_fs = Path("/dev/shm")
    if other_fs.is_dir() and os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev:
        env["TMPDIR"] = str(other_fs)  # the usual cluster case: $TMPDIR on another file system
    script = KILL_MID_WRITE.format(repo=str(REPO_ROOT), ckpt_dir=str(ckpt_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 240
        line = ""
        while "WRITING" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "WRITING" in line, proc.stderr.read()[-3000:] if proc.poll() is not None else "no write seen"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = ckpt_dir / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)  # complete, not truncated
    assert checkpoint["epoch"] == 0
    leftovers = [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "the killed write went to a temporary file beside the checkpoint"
    from anomaly_bench.atomic import remove_stale_temporaries

    assert remove_stale_temporaries(ckpt_dir) == leftovers


# ------------------------------------------------------------- issue 17.5: two writers, one directory
def _make_run(args: tuple[str, float]) -> str:
    exp_dir, start = args
    while time.time() < start:
        time.sleep(0.001)
    return runs.new_run(Path(exp_dir)).name


def test_thirty_processes_creating_runs_at_once_get_thirty_directories(tmp_path: Path) -> None:
    start = time.time() + 2.0
    with get_context("fork").Pool(30) as pool:
        names = pool.map(_make_run, [(str(tmp_path / "exp"), start)] * 30)
    assert len(set(names)) == 30 and sorted(names, key=lambda n: int(n.split("_")[1]))[-1] == "version_29"


def test_three_fits_started_together_get_three_runs(synth_mvtec: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "anomaly_bench.cli", "fit", *base_args(synth_mvtec, tmp_path)],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    versions = _versions(tmp_path)
    assert versions == ["version_0", "version_1", "version_2"]
    exp = tmp_path / "TinyModel" / "MVTecAD" / "all"
    for version in versions:
        assert (exp / version / "checkpoints" / "last.ckpt").is_file()
        assert len((exp / version / "logs" / "fit" / "metrics.csv").read_text().splitlines()) >= 1


# ----------------------------------------------------------------- issue 17.6: bad input, one line
@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--data.init_args.image_size", "-32", "image_size"),
    ("--data.init_args.batch_size", "0", "batch_size"),
    ("--data.init_args.num_workers", "-1", "num_workers"),
])
def test_bad_data_options_are_one_line_errors_naming_the_key(synth_mvtec, tmp_path, flag, value, named) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        main(["fit", *base_args(synth_mvtec, tmp_path, flag, value)])
    assert "\n" not in str(info.value)


def test_model_names_lower_case_and_close_misspellings(synth_mvtec: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model", "crad", "--print_config"])
    assert "class_path: anomaly_bench.CRAD" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="did you mean 'CRAD'"):
        main(["fit", "--model", "CRADD", "--data", "MVTecAD", "--data.root", str(synth_mvtec)])
    proc = run_cli_subprocess(["fit", "--model", "CRADD"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_broken_image_read_by_a_worker_is_one_line_naming_the_file(synth_mvtec: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_mvtec, data)
    broken = sorted((data / "bottle" / "train" / "good").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated PNG
    proc = run_cli_subprocess(["fit", *base_args(data, tmp_path / "results", "--data.init_args.num_workers", "1",
                                                  "--data.init_args.cache", "none")])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("anomaly-bench: error:")]
    assert len(errors) == 1 and str(broken) in errors[0] and "Traceback" not in proc.stderr


def test_different_unicode_category_names_never_share_a_folder() -> None:
    names = ["café", "cafe\u0301", "cafe", "caf_e9", "bottle/../x", "bottle+cable"]
    tags = {runs.category_tag(n) for n in names}
    assert runs.category_tag("café") == runs.category_tag("cafe\u0301")  # the same name, two encodings
    assert len(tags) == len(names) - 1
    assert all("/" not in tag and not tag.startswith(".") for tag in tags)
    assert runs.category_tag("metal_nut") == "metal_nut" and runs.category_tag("..") != ".."


# ----------------------------------------------------------------- issue 18.2: a quiet terminal
NOISE = ("litlogger", "LeafSpec", "across ranks is zero", "module(s) in eval mode", "v_num", "loss_step",
         "Tip:", "will override existing callbacks")


@pytest.mark.parametrize("columns", [80, 200])
def test_the_terminal_is_quiet_and_prints_whole_column_names(synth_mvtec: Path, tmp_path: Path, columns: int) -> None:
    env_extra = {"COLUMNS": str(columns)}
    args = base_args(synth_mvtec, tmp_path, *LEARNED, "--trainer.enable_progress_bar", "true")
    fit = run_cli_subprocess(["fit", *args], env_extra=env_extra)
    test = run_cli_subprocess(["test", *args, "--ckpt_path", "last"], env_extra=env_extra)
    assert fit.returncode == 0 and test.returncode == 0, (fit.stderr[-2000:], test.stderr[-2000:])
    everything = fit.stdout + fit.stderr + test.stdout + test.stderr
    for noise in NOISE:
        assert noise not in everything, noise
    assert "loss" in fit.stdout + fit.stderr  # the method's real loss is shown
    table = test.stdout
    for column in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro", "num_images",
                   "num_anomalous", "image_f1max_oracle", "bottle", "carpet", "mean"):
        assert column in table, column
    assert "…" not in table and "..." not in table
    table_lines = [line for line in table.splitlines() if line[:1] in "┏┃┡│└"]
    assert table_lines and max(len(line) for line in table_lines) <= columns
    counts = [line for line in table_lines if "num_images" in line][0]
    assert re.fullmatch(r"│ num_images +(│ +\d+ )+│", counts.strip()), counts  # whole numbers for counts
    assert table.count("image_auroc") == 1  # one table, not Lightning's as well


def test_version_flag(capsys) -> None:
    from anomaly_bench import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"anomaly-bench {__version__}"


# -------------------------------------------------------------- issue 18.3: the Python API
def test_the_python_api_gets_run_folders_paths_and_separate_pictures(synth_mvtec: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    from anomaly_bench import CRAD, GLAD, MVTecAD, PatchCore, PatchDiffGRAD, Prediction  # noqa: F401
    from tests.helpers.tiny_model import TinyModel

    data = MVTecAD(root=synth_mvtec, category="all", image_size=32, batch_size=4, num_workers=0)
    trainer = Trainer(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", enable_progress_bar=False,
                      enable_model_summary=False, logger=False)
    model = TinyModel()
    trainer.fit(model, data)
    run = tmp_path / "TinyModel" / "MVTecAD" / "all" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    trainer.test(model, data)
    predictions = trainer.predict(model, data)
    assert (run / "metrics.json").is_file() and (run / "heatmaps" / "test").is_dir()
    assert (run / "heatmaps" / "predict").is_dir()  # predict writes beside, never over, the test pictures
    first = predictions[0]
    assert isinstance(first, Prediction) and len(first.path) == first.anomaly_map.shape[0]
    assert all(Path(p).is_file() for p in first.path) and set(first.category) <= {"bottle", "carpet"}
    second = Trainer(default_root_dir=str(tmp_path), max_epochs=1, accelerator="cpu", enable_progress_bar=False,
                     enable_model_summary=False, logger=False)
    second.fit(TinyModel(), data)
    assert (tmp_path / "TinyModel" / "MVTecAD" / "all" / "version_1" / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------- issue 16.2: the paper protocol preset
def test_the_paper_protocol_is_one_switch_and_recorded(synth_mvtec: Path, tmp_path: Path) -> None:
    paper = str(REPO_ROOT / "configs" / "protocols" / "paper.yaml")
    main(["fit", *base_args(synth_mvtec, tmp_path), "--config", paper])
    main(["test", *base_args(synth_mvtec, tmp_path), "--config", paper, "--ckpt_path", "last"])
    info = json.loads((latest(tmp_path) / "metrics.json").read_text())
    assert info["protocol"] == "paper" and info["resolution"] == "model"
    assert not info.get("thresholds")  # every training image trained the model: no hold-out, no thresholds
    default = tmp_path / "default"
    main(["fit", *base_args(synth_mvtec, default)])
    main(["test", *base_args(synth_mvtec, default), "--ckpt_path", "last"])
    info = json.loads((latest(default) / "metrics.json").read_text())
    assert info["protocol"] == "default" and info["resolution"] == "native" and info["thresholds"]


def test_an_output_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    from anomaly_bench.atomic import atomic_write_text

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    target = a_file / "data"  # a file stands where a folder is needed
    with pytest.raises(OSError):
        main(["synth", "--layout", "mvtec", "--root", str(target), "--size", "64", "--train", "2",
              "--test-good", "1", "--per-defect", "1", "--categories", "grid"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anomaly-bench: error: ") and str(target) in err[0], err
    # the atomic writers name the file asked for, never their temporary file, and leave nothing behind
    folder = tmp_path / "report.html"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="expected a file path") as info:
        atomic_write_text(folder, "<html>")
    assert info.value.filename == str(folder) and list(tmp_path.glob(".report.html.*")) == []
    with pytest.raises(OSError, match="a file stands where a folder of the path is needed") as info:
        atomic_write_text(a_file / "out.json", "{}")
    assert info.value.filename == str(a_file / "out.json")


def test_a_value_synth_refuses_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--layout", "mvtec", "--root", str(tmp_path / "s"), "--size", "-5"])
    assert exit_info.value.code == 2
    assert "error: size must be >= 32 pixels, got -5" in capsys.readouterr().err
