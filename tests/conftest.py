"""Shared fixtures: small synthetic datasets in real layouts, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Two shared cores: one torch thread per test process is much faster than oversubscribing.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MVTec-layout categories, 64 px: enough for the spine's end-to-end tests in seconds."""
    from anomaly_bench.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth") / "mvtec"
    write_dataset("mvtec", root, categories=["bottle", "carpet"], size=64, seed=0, train=12, test_good=6,
                  per_defect=3)
    return root


@pytest.fixture
def single_thread():
    """One torch thread for the test: the machine's cores are shared, and oversubscribed threads
    spin (about 10x slower here). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
