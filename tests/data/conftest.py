"""Synthetic datasets written once per test session (small: 64 px, few images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_bench.data.synthetic import write_dataset

SMALL = dict(size=64, train=6, test_good=3, per_defect=2, validation=2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory):
    """``synth_root(layout)`` -> root of a (cached) small synthetic dataset in that layout."""
    base = tmp_path_factory.mktemp("synth")
    written: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in written:
            written[layout] = base / layout
            write_dataset(layout, written[layout], **SMALL)
        return written[layout]

    return get


@pytest.fixture()
def fresh(tmp_path: Path):
    """``fresh(layout, **overrides)`` -> a private copy that a test may damage."""

    def make(layout: str, **overrides) -> Path:
        root = tmp_path / layout
        write_dataset(layout, root, **{**SMALL, **overrides})
        return root

    return make
