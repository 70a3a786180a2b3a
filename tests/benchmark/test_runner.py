"""Running a grid with a fake CLI: every cell runs fit then test, finished cells are skipped,
a failing cell is reported and does not stop the others, GPU cells are pinned to one device."""

import json

import pandas as pd
import yaml

from anomaly_bench.benchmark.cli import benchmark_main
from anomaly_bench.benchmark.grid import expand_grid, parse_grid
from anomaly_bench.benchmark.runner import GridRunner, default_command, find_checkpoint
from tests.benchmark.conftest import grid_dict


def _calls(run_dir):
    path = run_dir / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_every_cell_runs_fit_then_test_with_the_checkpoint(tmp_path, fake_command):
    grid = parse_grid(grid_dict(tmp_path))
    results = GridRunner(grid, expand_grid(grid), command_builder=fake_command, log=lambda m: None).run()
    assert [r.status for r in results] == ["done"] * 4
    run_dir = tmp_path / "out" / "cells" / "good" / "synth" / "all" / "seed1"
    calls = _calls(run_dir)
    assert calls[0].startswith("fit ckpt=None")
    assert calls[1].startswith(f"test ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    cfg = yaml.safe_load((run_dir / "cell_config.yaml").read_text())
    assert cfg["seed_everything"] == 1 and cfg["data"]["init_args"]["category"] == "all"
    assert json.loads((run_dir / "cell_status.json").read_text())["status"] == "done"


def test_rerun_skips_finished_cells(tmp_path, fake_command):
    grid = parse_grid(grid_dict(tmp_path))
    cells = expand_grid(grid)
    GridRunner(grid, cells, command_builder=fake_command, log=lambda m: None).run()
    # lose one cell's metrics: only that one runs again
    lost = tmp_path / "out" / "cells" / "okay" / "synth" / "all" / "seed0"
    (lost / "metrics.json").unlink()
    results = GridRunner(grid, cells, command_builder=fake_command, log=lambda m: None).run()
    status = {r.cell_id: r.status for r in results}
    assert status.pop("okay/synth/all/seed0") == "done"
    assert set(status.values()) == {"skipped"}
    # the fit had finished (its checkpoint is there): only the test runs again
    assert [c.split()[0] for c in _calls(lost)] == ["fit", "test", "test"]
    assert len(_calls(tmp_path / "out" / "cells" / "good" / "synth" / "all" / "seed0")) == 2
    # --rerun forces everything
    results = GridRunner(grid, cells, command_builder=fake_command, rerun=True, log=lambda m: None).run()
    assert {r.status for r in results} == {"done"}


def test_a_failing_cell_does_not_stop_the_grid(tmp_path, fake_command):
    raw = grid_dict(tmp_path)
    raw["models"].insert(1, {"name": "crashy", "class_path": "fake.Crash", "init_args": {"fail_at": "fit"}})
    raw["models"].append({"name": "testcrash", "class_path": "fake.Crash2", "init_args": {"fail_at": "test"}})
    grid = parse_grid(raw)
    results = GridRunner(grid, expand_grid(grid), command_builder=fake_command, log=lambda m: None).run()
    status = {r.cell_id: r.status for r in results}
    assert status["crashy/synth/all/seed0"] == "failed" and status["testcrash/synth/all/seed1"] == "failed"
    assert status["okay/synth/all/seed1"] == "done" and status["good/synth/all/seed0"] == "done"
    error = (tmp_path / "out" / "cells" / "crashy" / "synth" / "all" / "seed0" / "error.log").read_text()
    assert "stage 'fit'" in error and "simulated crash in fit" in error
    crashed = tmp_path / "out" / "cells" / "crashy" / "synth" / "all" / "seed0"
    assert len(_calls(crashed)) == 1  # test is not attempted after a failed fit


def test_benchmark_main_reports_failures_and_writes_tables(tmp_path, fake_command, capsys):
    raw = grid_dict(tmp_path)
    raw["models"].append({"name": "crashy", "class_path": "fake.Crash", "init_args": {"fail_at": "test"}})
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert benchmark_main(["--config", str(cfg)], command_builder=fake_command) == 1
    out = capsys.readouterr().out
    assert "crashy/synth/all/seed0" in out and "failed" in out
    report = tmp_path / "out" / "report"
    summary = pd.read_csv(report / "seed_stats.csv")
    good = summary[(summary.model == "good") & (summary.metric == "image_auroc")].iloc[0]
    # fake: category a = 0.9 + 0.01*seed, b = +0.02 -> class mean 91 + seed; seeds 0,1 -> 91.5 ± 0.707
    assert abs(good["mean"] - 91.5) < 1e-9 and abs(good["std"] - 2 ** -0.5) < 1e-9 and good["n_seeds"] == 2
    assert (report / "report.md").read_text().count("good") >= 2
    # a second run skips everything that finished and retries only the failed cells
    assert benchmark_main(["--config", str(cfg), "--only", "good/*"], command_builder=fake_command) == 0
    assert len(_calls(tmp_path / "out" / "cells" / "good" / "synth" / "all" / "seed0")) == 2


def test_dry_run_lists_cells(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid_dict(tmp_path)))
    assert benchmark_main(["--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "good/synth/all/seed0" in out and "4 cells" in out
    assert not (tmp_path / "out").exists()


def test_bad_grid_file_returns_2(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("models: 3\n")
    assert benchmark_main(["--config", str(cfg)]) == 2
    assert "models" in capsys.readouterr().err


def test_gpu_cells_run_in_parallel_one_device_each(tmp_path, fake_command):
    grid = parse_grid(grid_dict(tmp_path, devices=[0, 1]))
    runner = GridRunner(grid, expand_grid(grid), command_builder=fake_command, log=lambda m: None)
    assert runner.slots == [0, 1]
    results = runner.run()
    assert {r.status for r in results} == {"done"}
    seen = set()
    for r in results:
        lines = _calls(tmp_path / "out" / "cells" / r.cell_id)
        devices = {line.split("cuda=")[1] for line in lines}
        assert len(devices) == 1  # fit and test of a cell share its device
        seen |= devices
        assert r.device == f"cuda:{devices.pop()}"
    assert seen == {"0", "1"}


def test_cpu_grid_is_sequential_and_hides_gpus(tmp_path, fake_command):
    grid = parse_grid(grid_dict(tmp_path, devices="cpu"))
    runner = GridRunner(grid, expand_grid(grid)[:1], command_builder=fake_command, log=lambda m: None)
    assert runner.slots == [None]
    runner.run()
    run_dir = tmp_path / "out" / "cells" / "good" / "synth" / "all" / "seed0"
    assert all(line.endswith("cuda=") for line in _calls(run_dir))
    assert yaml.safe_load((run_dir / "cell_config.yaml").read_text())["trainer"]["accelerator"] == "cpu"


def test_default_command_is_the_cli(tmp_path):
    cmd = default_command("test", tmp_path / "c.yaml", tmp_path / "run", None)
    assert cmd[1:5] == ["-m", "anomaly_bench.cli", "test", "--config"]
    assert cmd[-2:] == ["--ckpt_path", "last"] and "--run_dir" in cmd


def test_find_checkpoint_prefers_last(tmp_path):
    assert find_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch=0.ckpt").write_text("x")
    assert find_checkpoint(tmp_path).name == "epoch=0.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    assert find_checkpoint(tmp_path).name == "last.ckpt"
