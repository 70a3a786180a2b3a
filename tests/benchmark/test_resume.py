"""Stopping and resuming a grid (issue 17): SIGTERM to the runner leaves no child process, a killed
runner's stage dies with it, an interrupted cell resumes from its checkpoint, and only a complete
result counts as done."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from anomaly_bench.benchmark.cell_runner import CellJob, run_cell
from anomaly_bench.benchmark.cli import benchmark_main
from anomaly_bench.benchmark.grid import expand_grid, parse_grid
from anomaly_bench.benchmark.runner import GridRunner
from anomaly_bench.benchmark.stage import StopRequest
from tests.benchmark.conftest import assert_resumed, epochs_by_pid, grid_dict, processes_mentioning, wait_for

REPO = Path(__file__).resolve().parents[2]
CELL = Path("slow") / "synth" / "all" / "seed0"


def _slow_grid(tmp_path, epochs=6, epoch_s=0.4):
    raw = grid_dict(tmp_path, seeds=[0], models=[
        {"name": "slow", "class_path": "fake.Slow", "init_args": {"quality": 0.8, "epochs": epochs, "epoch_s": epoch_s}}])
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return raw, cfg


def _start_runner(cfg, *extra):
    return subprocess.Popen([sys.executable, "-m", "tests.benchmark.run_grid", "--config", str(cfg), "--no_live", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs(run_dir):
    return epochs_by_pid(run_dir)


def _check_resumed(run_dir, epochs=6):
    """The second fit started right after the last checkpointed epoch, and all epochs ran."""
    assert_resumed(run_dir, epochs)
    fits = [c for c in (run_dir / "calls.txt").read_text().splitlines() if c.startswith("fit")]
    assert fits[0].startswith("fit ckpt=None") and fits[1].startswith(f"fit ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")


def test_sigterm_stops_the_runner_leaves_no_child_and_the_cell_resumes(tmp_path, fake_command):
    _, cfg = _slow_grid(tmp_path)
    run_dir = tmp_path / "out" / "cells" / CELL
    runner = _start_runner(cfg)
    try:
        assert wait_for(lambda: len(_epochs(run_dir)) >= 2), runner.stdout.read() if runner.poll() is not None else ""
        runner.send_signal(signal.SIGTERM)
        out, _ = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 128 + signal.SIGTERM, out
    assert "run the same command again to resume" in out
    assert processes_mentioning(str(run_dir)) == []  # neither the stage nor its guard survived
    status = json.loads((run_dir / "cell_status.json").read_text())
    assert status["status"] == "interrupted" and status["fit_done"] is False
    assert json.loads((tmp_path / "out" / "status.json").read_text())["outcome"] == "interrupted"
    assert list((run_dir / "lease").glob("*.json")) == []  # the lease was released

    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    _check_resumed(run_dir)
    assert json.loads((run_dir / "cell_status.json").read_text())["attempt"] == 2


def test_a_killed_runner_takes_its_stage_along_and_a_restart_takes_the_cell_over(tmp_path, fake_command):
    _, cfg = _slow_grid(tmp_path)
    run_dir = tmp_path / "out" / "cells" / CELL
    runner = _start_runner(cfg)
    try:
        assert wait_for(lambda: len(_epochs(run_dir)) >= 2)
        runner.kill()  # SIGKILL: no clean-up in the runner at all
        runner.wait(30)
    finally:
        runner.kill()
    assert wait_for(lambda: processes_mentioning(str(run_dir)) == [], timeout=5)
    assert list((run_dir / "lease").glob("*.json"))  # left behind, but its owner is dead...
    start = time.monotonic()
    results = GridRunner(parse_grid(yaml.safe_load(cfg.read_text())), expand_grid(parse_grid(yaml.safe_load(cfg.read_text()))),
                         command_builder=fake_command, log=lambda m: None, live=False).run()
    assert [r.status for r in results] == ["done"]
    assert time.monotonic() - start < 30  # ...so the restart did not wait out the 60 s lease
    _check_resumed(run_dir)


def test_a_partial_metrics_file_is_not_done_and_only_the_test_runs_again(tmp_path, fake_command):
    raw, _ = _slow_grid(tmp_path, epochs=2, epoch_s=0)
    grid = parse_grid(raw)
    cells = expand_grid(grid)
    assert [r.status for r in GridRunner(grid, cells, command_builder=fake_command, log=lambda m: None).run()] == ["done"]
    run_dir = tmp_path / "out" / "cells" / CELL
    metrics = run_dir / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])  # a test stage killed mid-write (before metrics.json was atomic)
    results = GridRunner(grid, cells, command_builder=fake_command, log=lambda m: None).run()
    assert [r.status for r in results] == ["done"]
    assert [c.split()[0] for c in (run_dir / "calls.txt").read_text().splitlines()] == ["fit", "test", "test"]
    assert json.loads(metrics.read_text())["mean"]["image_auroc"] == 0.8 + 0.01


def test_rerun_starts_over_once_per_run_and_a_retry_in_the_same_run_resumes(tmp_path, fake_command):
    raw, _ = _slow_grid(tmp_path, epochs=4, epoch_s=0.3)
    grid = parse_grid(raw)
    (cell,) = expand_grid(grid)
    runner = GridRunner(grid, [cell], command_builder=fake_command, log=lambda m: None)
    assert [r.status for r in runner.run()] == ["done"]
    run_dir = tmp_path / "out" / "cells" / CELL
    job = CellJob(grid=runner.grid, cell=cell, run_id="rerun-1", cwd=str(REPO), command_builder=fake_command,
                  rerun=True)
    stop = StopRequest()
    stopper = threading.Thread(target=lambda: wait_for(lambda: len(_epochs(run_dir)) >= 6) and stop.request())
    stopper.start()
    first = run_cell(job, stop=stop)
    stopper.join()
    assert first.status == "interrupted"
    assert run_cell(job).status == "done"
    fits = [c for c in (run_dir / "calls.txt").read_text().splitlines() if c.startswith("fit")]
    assert fits[0].startswith("fit ckpt=None")  # the original run
    assert fits[1].startswith("fit ckpt=None")  # --rerun: from scratch despite the finished checkpoint
    assert fits[2].startswith("fit ckpt=") and "last.ckpt" in fits[2]  # the retry in the same run resumes
