"""Multi-node training of one cell (issue 21.3): two "nodes" on localhost started by torchrun agree on
one run directory before the process group exists (``job_<id>`` from the launcher's job id) and give
the metrics of a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_bench.cli import main
from tests.conftest import REPO_ROOT
from tests.test_cli import base_args, latest, read_metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_agree_on_one_run_and_match_one_process(synth_mvtec: Path, tmp_path: Path) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["--trainer.max_epochs", "1"]
    main(["fit", *base_args(synth_mvtec, single, *common)])
    main(["test", *base_args(synth_mvtec, single, *common), "--ckpt_path", "last"])

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    args = ["fit", *base_args(synth_mvtec, multi, *common), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.num_nodes", "2", "--trainer.strategy", "ddp"]
    nodes = []
    for node_rank in (0, 1):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                    "--rdzv_id", "job42", "-m", "anomaly_bench.cli", *args]
        nodes.append(subprocess.Popen(torchrun, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for node in nodes:
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    experiment = multi / "TinyModel" / "MVTecAD" / "all"
    assert sorted(p.name for p in experiment.iterdir() if not p.is_symlink()) == ["job_job42"]
    run = experiment / "job_job42"
    assert (run / "checkpoints" / "last.ckpt").is_file()

    main(["test", *base_args(synth_mvtec, multi, *common), "--ckpt_path", "last"])
    assert latest(multi) == run.resolve()
    one, two = read_metrics(latest(single)), read_metrics(run)
    assert one.keys() == two.keys()
    for category in one:
        for metric, value in one[category].items():
            assert two[category][metric] == pytest.approx(value, abs=1e-6), (category, metric)
