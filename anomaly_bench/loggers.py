"""The run's CSV log: ``<run_dir>/logs/<subcommand>/metrics.csv``, kept across a resume.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so ``fit --ckpt_path last``
used to erase the curves of the epochs before the crash. ``RunCSVLogger`` keeps the file: on a resume it
drops only the rows logged after the checkpoint's step (the interrupted epoch, which is trained
again) and appends from there, with the header merged when new columns appear.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from anomaly_bench.atomic import atomic_path


class _KeepingWriter(ExperimentWriter):
    """An ExperimentWriter that continues an existing ``metrics.csv`` instead of deleting it."""

    def __init__(self, log_dir: str) -> None:  # noqa: D107 - Lightning's __init__ would delete the file
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(self.log_dir, self.NAME_METRICS_FILE)
        self._fs.makedirs(self.log_dir, exist_ok=True)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])


def drop_rows_after(metrics_csv: Path, step: int) -> int:
    """Remove the rows of ``metrics_csv`` logged after ``step`` (atomically); returns how many went."""
    if not metrics_csv.is_file():
        return 0
    with metrics_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)

    def logged_at(row: dict[str, str]) -> float:
        try:
            return float(row.get("step") or 0)
        except ValueError:
            return 0.0

    kept = [row for row in rows if logged_at(row) <= step]
    if len(kept) == len(rows):
        return 0
    with atomic_path(metrics_csv) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
    return len(rows) - len(kept)


class RunCSVLogger(CSVLogger):
    """CSV metrics of one subcommand of a run, continued (not replaced) when a fit resumes.

    Args:
        run_dir: the run directory; the log goes to ``<run_dir>/logs/<subcommand>/metrics.csv``.
        subcommand: ``fit`` | ``validate`` | ``test`` | ``predict``.
        resume_step: the global step of the checkpoint a fit resumes from; rows logged after it
            (the interrupted epoch, trained again) are dropped. None for a fresh run, whose old
            file (if any) is replaced.
    """

    def __init__(self, run_dir: str | Path, subcommand: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=str(run_dir), name="logs", version=subcommand)
        self.resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            metrics_csv = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            if self.resume_step is None:
                metrics_csv.unlink(missing_ok=True)
            else:
                drop_rows_after(metrics_csv, self.resume_step)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
