from pathlib import Path

import pytest

from tests.benchmark.fake_commands import FAKE_CLI, fake_command as _fake_command  # noqa: F401


@pytest.fixture
def fake_command():
    """Command builder that runs tests/benchmark/fake_cli.py instead of the real CLI."""
    return _fake_command


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


def epochs_by_pid(run_dir: Path) -> list[tuple[int, int, float]]:
    """(epoch, pid, time) for every epoch start in ``<run_dir>/epochs.log`` (written by fake_cli.py
    and by tests/benchmark/epoch_log.py), in order."""
    path = run_dir / "epochs.log"
    if not path.exists():
        return []
    return [(int(e), int(p), float(t)) for e, p, t in (line.split() for line in path.read_text().splitlines())]


def assert_resumed(run_dir: Path, epochs: int) -> tuple[int, int]:
    """The cell's fit ran in two processes and the second one resumed right after the last epoch the
    first one checkpointed (it lost at most the epoch in flight); returns both pids."""
    seen = epochs_by_pid(run_dir)
    pids = list(dict.fromkeys(p for _, p, _ in seen))
    assert len(pids) == 2, seen
    first = [e for e, p, _ in seen if p == pids[0]]
    second = [e for e, p, _ in seen if p == pids[1]]
    assert first[0] == 0 and second[0] >= 1, seen  # resumed, not restarted
    assert second[0] in (first[-1], first[-1] + 1), seen
    assert second[-1] == epochs - 1, seen
    assert "resuming from" in (run_dir / "fit.log").read_text()
    return pids[0], pids[1]


def wait_for(predicate, timeout: float = 60.0, step: float = 0.05) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    import os

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found
