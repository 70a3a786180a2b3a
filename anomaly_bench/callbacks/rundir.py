"""``RunDirectory``: every file of a run goes into its own versioned run directory.

The CLI chooses the directory before the Trainer exists (its config and loggers need it) and marks
the trainer; for a plain Python ``Trainer().fit(model, datamodule)`` this callback makes the same
choice at ``setup`` with the same rule (``anomaly_bench.runs.choose_run_dir``): ``fit`` gets a new
``<default_root_dir>/<Model>/<Data>/<category>/version_N`` (or resumes in the run its checkpoint
belongs to), and later stages of the same trainer keep writing there, so nothing is overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_bench import runs

RUN_DIR_ATTRIBUTE = "anomaly_bench_run_dir"


def mark_run_dir(trainer: Trainer, run_dir: str | Path) -> None:
    """Point ``trainer.default_root_dir`` at ``run_dir`` and remember the choice for later stages."""
    trainer._default_root_dir = str(run_dir)  # read by Lightning's checkpointing and by our callbacks
    setattr(trainer, RUN_DIR_ATTRIBUTE, Path(run_dir))


def run_dir_of(trainer: Trainer) -> Path:
    """The run directory of ``trainer`` (its ``default_root_dir`` before one was chosen)."""
    return Path(getattr(trainer, RUN_DIR_ATTRIBUTE, None) or trainer.default_root_dir)


class RunDirectory(Callback):
    """Choose the run directory of a Python-API run at ``setup`` (no-op when the CLI chose one)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(trainer, RUN_DIR_ATTRIBUTE, None) is not None:
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        exp_dir = runs.experiment_dir(trainer.default_root_dir, type(pl_module).__name__,
                                      type(datamodule).__name__ if datamodule is not None else "data",
                                      getattr(datamodule, "category", None))
        ckpt = trainer.ckpt_path
        chosen = None
        if trainer.is_global_zero:  # one decision, shared with every rank
            checkpoint_file = ckpt if ckpt and Path(ckpt).is_file() else None
            chosen = str(runs.choose_run_dir(exp_dir, str(getattr(stage, "value", stage)), checkpoint_file))
        mark_run_dir(trainer, trainer.strategy.broadcast(chosen, src=0))
