"""The real demo grid (`make demo`): four methods, fit + test through the CLI, on synthetic data."""

from pathlib import Path

import pandas as pd
import pytest

from anomaly_bench.benchmark.cli import benchmark_main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_grid_runs_every_method(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    assert benchmark_main(["--config", "benchmarks/demo.yaml", "--output_dir", str(out)]) == 0
    long = pd.read_csv(out / "report" / "results_long.csv")
    assert set(long["model"]) == {"crad", "grad", "patchdiff", "glad"}
    auroc = long[(long.metric == "image_auroc") & (long.category != "mean")]
    assert auroc["value"].between(0, 1).all() and len(auroc) >= 8
    assert (out / "report" / "paper_comparison.csv").is_file()
    # a second run finds every cell finished
    assert benchmark_main(["--config", "benchmarks/demo.yaml", "--output_dir", str(out)]) == 0
    status = pd.read_csv(out / "report" / "cells.csv")
    assert set(status["status"]) == {"skipped"}


@pytest.mark.slow
def test_speed_script_measures_crad_on_cpu(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--methods", "crad", "--devices",
                           "cpu", "--iters", "3", "--warmup", "1", "--train-steps", "2", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (csv,) = tmp_path.glob("speed_cpu*.csv")
    row = pd.read_csv(csv).iloc[0]
    assert row["status"] == "ok" and row["images_per_s"] > 0 and row["peak_memory_mb"] > 0
