"""The ray launcher on a real Ray cluster on this machine: ``ray.cluster_utils.Cluster`` runs a head
and two worker nodes, each with its own raylet, so losing a node is real (its processes die) while
the run directories stay on the one shared disk. Kept small: 1 CPU and 80 MB of object store per
node, no dashboard."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomaly_bench.benchmark import ray_launcher, storage
from anomaly_bench.benchmark.cell_runner import is_cell_done
from anomaly_bench.benchmark.cli import benchmark_main
from tests.benchmark.conftest import assert_resumed, epochs_by_pid, grid_dict, processes_mentioning, wait_for

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STORE = 80 * 2**20
NODE = {"num_cpus": 1, "object_store_memory": STORE}


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPU: cells never run there) + two one-CPU workers; this test process is the driver."""
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the stages and the Ray workers import tests.* from the working directory


def _write(tmp_path, raw):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _cells(tmp_path):
    return pd.read_csv(tmp_path / "out" / "report" / "cells.csv")


def _worker_ids(cluster):
    return {n.node_id[:8] for n in cluster.worker_nodes}


def test_cells_spread_over_both_workers_and_each_is_reported_once(cluster, tmp_path, in_repo, fake_command):
    raw = grid_dict(tmp_path, seeds=[0, 1, 2], launcher="ray", wandb={"project": "p", "mode": "offline"})
    for model in raw["models"]:
        model["init_args"].update(epochs=2, epoch_s=0.5)
    cfg = _write(tmp_path, raw)
    start = time.monotonic()
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    print(f"6 fake cells on 2 workers: {time.monotonic() - start:.1f} s")
    cells = _cells(tmp_path)
    assert sorted(cells["cell_id"]) == sorted(f"{m}/synth/all/seed{s}" for m in ("good", "okay") for s in range(3))
    assert set(cells["status"]) == {"done"}
    assert {label.split("/")[1] for label in cells["node"]} == _worker_ids(cluster)  # both, never the head
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["launcher"] == "ray" and status["counts"]["done"] == 6 and len(status["cells"]) == 6
    # W&B: every cell, wherever it ran, logs into the grid's group, offline into its folder on the shared disk
    run_dir = tmp_path / "out" / "cells" / "okay" / "synth" / "all" / "seed2"
    logger = yaml.safe_load((run_dir / "cell_config.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert (logger["group"], logger["name"], logger["mode"]) == ("testgrid", "okay/synth/all/seed2", "offline")
    assert logger["save_dir"] == str(run_dir)
    # a re-run skips every cell without sending a task
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    assert set(_cells(tmp_path)["status"]) == {"skipped"}


def test_a_node_that_cannot_see_output_dir_stops_the_run_in_one_line(cluster, tmp_path, in_repo, fake_command,
                                                                    monkeypatch, capsys):
    elsewhere = tmp_path / "another_disk"
    real_write = storage.write_probe
    # the driver's token lands on "another disk": the workers, looking under output_dir, do not see it
    monkeypatch.setattr(ray_launcher, "write_probe", lambda output_dir, run_id: real_write(elsewhere, run_id))
    cfg = _write(tmp_path, grid_dict(tmp_path, seeds=[0], launcher="ray"))
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot see output_dir {tmp_path / 'out'}" in err and "node " in err and "shared storage" in err
    assert not (tmp_path / "out" / "cells").exists()  # no cell was started


def _tiny_grid(tmp_path, data_root, epochs, sleep_s):
    return {
        "name": "nodeloss", "output_dir": str(tmp_path / "out"), "launcher": "ray", "lease_s": 10,
        "ray": {"max_retries": 3}, "devices": "cpu", "seeds": [0],
        # "learned": optimiser steps, so Lightning writes last.ckpt after every epoch
        "models": [{"name": "tiny", "config": "tests/configs/tiny.yaml", "init_args": {"mode": "learned"},
                    "trainer": {"max_epochs": epochs, "callbacks": [
                        {"class_path": "tests.benchmark.epoch_log.EpochLog", "init_args": {"sleep_s": sleep_s}}]}}],
        "datasets": [{"name": "synth", "class_path": "anomaly_bench.data.MVTecAD",
                      "init_args": {"root": str(data_root), "num_workers": 0}, "categories": ["bottle"]}],
    }


def test_a_node_lost_mid_fit_costs_one_epoch(cluster, tmp_path, in_repo, synth_mvtec):
    """The real CLI and the tiny model: the worker node running the cell is removed while the cell is in
    epoch >= 2; Ray re-runs the cell on another node, which resumes from last.ckpt; the grid completes."""
    epochs = 4
    cfg = _write(tmp_path, _tiny_grid(tmp_path, synth_mvtec, epochs, sleep_s=1.0))
    box = {}
    driver = threading.Thread(target=lambda: box.update(rc=benchmark_main(["--config", str(cfg), "--no_live"])))
    driver.start()
    cells = tmp_path / "out" / "cells" / "tiny" / "synth"

    run_dir = cells / "bottle" / "seed0"
    assert wait_for(lambda: len(epochs_by_pid(run_dir)) >= 3, timeout=180), "the cell never reached epoch 2"
    label = json.loads((run_dir / "cell_status.json").read_text())["node"]
    (node,) = [n for n in cluster.worker_nodes if n.node_id.startswith(label.split("/")[1])]
    lost_pid = epochs_by_pid(run_dir)[0][1]
    cluster.remove_node(node)
    removed_at = time.time()
    cluster.add_node(**NODE)  # keep two workers for the other tests
    assert wait_for(lambda: not processes_mentioning(str(run_dir)) or lost_pid not in processes_mentioning(str(run_dir)),
                    timeout=10)
    driver.join(300)
    assert not driver.is_alive() and box["rc"] == 0
    first_pid, _ = assert_resumed(run_dir, epochs)
    assert first_pid == lost_pid
    assert all(t < removed_at + 1.0 for _, p, t in epochs_by_pid(run_dir) if p == lost_pid)  # no orphan went on
    fit_log = (run_dir / "fit.log").read_text()
    assert "attempt 2 on" in fit_log and "resuming from" in fit_log
    table = _cells(tmp_path).set_index("cell_id")
    assert list(table.index) == ["tiny/synth/bottle/seed0"]  # once, although it ran twice
    lost = table.loc["tiny/synth/bottle/seed0"]
    assert lost["status"] == "done" and lost["attempts"] == 2 and lost["node"] != label


# SIGTERM on Ray is slow-marked to keep `make test` short; the local launcher's SIGTERM test covers
# the runner's side, this one Ray's task cancel
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, id="SIGKILL"),
                                 pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow)])
def test_a_stopped_runner_is_restarted_finished_cells_skipped_the_interrupted_one_resumed(
        cluster, tmp_path, in_repo, fake_command, sig):
    """SIGKILL: Ray ends the dead driver's tasks, the guards their stages. SIGTERM: the runner cancels
    its tasks, the stages stop gracefully, the runner exits 143."""
    raw = grid_dict(tmp_path, seeds=[0], launcher="ray", models=[
        {"name": f"m{i}", "class_path": "fake.M", "init_args": {"quality": 0.5, "epochs": epochs, "epoch_s": 0.5}}
        for i, epochs in enumerate((2, 8, 2))])
    cfg = _write(tmp_path, raw)
    cells = tmp_path / "out" / "cells"
    runner = subprocess.Popen([sys.executable, "-m", "tests.benchmark.run_grid", "--config", str(cfg), "--no_live",
                               "--ray_address", cluster.address], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        # m0 (2 epochs) finishes first; m1 (8 epochs) is mid-fit by then; m2 waits for a free node or runs
        assert wait_for(lambda: is_cell_done(cells / "m0/synth/all/seed0")
                        and len(epochs_by_pid(cells / "m1/synth/all/seed0")) >= 2, timeout=120)
        runner.send_signal(sig)
        out, _ = runner.communicate(timeout=60)
    finally:
        runner.kill()
    interrupted = cells / "m1/synth/all/seed0"
    if sig == signal.SIGTERM:
        assert runner.returncode == 128 + signal.SIGTERM, out
        assert json.loads((interrupted / "cell_status.json").read_text())["status"] == "interrupted"
    assert wait_for(lambda: not processes_mentioning(str(interrupted)), timeout=30)  # Ray ended the dead job's tasks
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    table = _cells(tmp_path).set_index("cell_id")
    assert len(table) == 3 and table.loc["m0/synth/all/seed0", "status"] == "skipped"
    assert table.loc["m1/synth/all/seed0", "status"] == "done"
    assert_resumed(interrupted, 8)
    fits = [c for c in (interrupted / "calls.txt").read_text().splitlines() if c.startswith("fit")]
    assert fits[0].startswith("fit ckpt=None") and "last.ckpt" in fits[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_external_ray_start_head_is_reached_through_ray_address(tmp_path, in_repo):
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    log = open(tmp_path / "head.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", f"--object-store-memory={100 * 2**20}", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        def accepting():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        assert wait_for(accepting, timeout=60, step=0.2), (tmp_path / "head.log").read_text()[-2000:]
        raw = grid_dict(tmp_path, seeds=[0])
        raw["models"] = raw["models"][:1]
        cfg = _write(tmp_path, raw)
        proc = subprocess.run([sys.executable, "-m", "tests.benchmark.run_grid", "--config", str(cfg), "--no_live",
                               "--launcher", "ray", "--ray_address", f"127.0.0.1:{port}"],
                              cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "ran on Ray (1 nodes" in proc.stdout
        table = _cells(tmp_path)
        assert list(table["status"]) == ["done"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started share its group
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        log.close()
        # `ray start` named this head the machine's current cluster; it is gone now
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
