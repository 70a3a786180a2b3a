import sys
from pathlib import Path

import pytest

FAKE_CLI = Path(__file__).with_name("fake_cli.py")


@pytest.fixture
def fake_command():
    """Command builder that runs tests/benchmark/fake_cli.py instead of the real CLI."""

    def build(stage, config_path, run_dir, ckpt):
        return [sys.executable, str(FAKE_CLI), stage, str(config_path), str(run_dir), str(ckpt)]

    return build


def grid_dict(tmp_path: Path, **overrides) -> dict:
    """A small grid: two fake models (class paths, no config file) on one dataset."""
    grid = {
        "name": "testgrid",
        "output_dir": str(tmp_path / "out"),
        "models": [
            {"name": "good", "class_path": "fake.Good", "init_args": {"quality": 0.9}},
            {"name": "okay", "class_path": "fake.Okay", "init_args": {"quality": 0.7}},
        ],
        "datasets": [{"name": "synth", "class_path": "anomaly_bench.data.MVTecAD",
                      "init_args": {"root": "data/x"}, "categories": "all"}],
        "seeds": [0, 1],
        "trainer": {"max_epochs": 1},
    }
    grid.update(overrides)
    return grid
