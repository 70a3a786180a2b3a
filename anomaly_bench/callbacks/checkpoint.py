"""Checkpointing defaults: ``last.ckpt`` every epoch, ``best.ckpt`` when there is a validation metric
to rank by; every file replaced atomically inside the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from anomaly_bench import runs
from anomaly_bench.atomic import atomic_path, remove_stale_temporaries
from anomaly_bench.callbacks.rundir import run_dir_of


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` every epoch and ``best.ckpt`` by ``monitor``.

    Anomaly validation sets often hold normal images only (held-out training normals, LOCO's
    ``validation/``), so the monitored metric may never be logged. Lightning's ModelCheckpoint then
    raises; here the best checkpoint is simply not written and ``--ckpt_path best`` falls back to
    ``last`` (see ``anomaly_bench.runs.checkpoint_file``).

    Every checkpoint is written to a temporary file in its own folder and renamed over the old one,
    so a crash mid-write never leaves a truncated ``last.ckpt`` (Lightning writes in place), whatever
    file system ``$TMPDIR`` is on; temporaries a killed run left behind are removed at the next setup.

    Args:
        dirpath: folder of the checkpoints; None = ``<run directory>/checkpoints``.
        monitor: the logged metric that ranks checkpoints for ``best.ckpt``.
        mode: ``max`` or ``min``: whether a larger ``monitor`` value is better.
        **kwargs: any other ``ModelCheckpoint`` argument.
    """

    def __init__(self, dirpath: str | None = None, monitor: str | None = "val/image_auroc",
                 mode: str = "max", **kwargs: Any) -> None:
        kwargs.setdefault("filename", "best")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 1)
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, monitor=monitor, mode=mode, **kwargs)
        self._configured_dirpath = dirpath
        self._last_epoch_saved = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._configured_dirpath is None:
            self.dirpath = str(run_dir_of(trainer) / runs.CHECKPOINT_DIR)
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stale_temporaries(self.dirpath)

    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return True
        # Lightning skips a save when the global step has not moved; methods that take no optimiser
        # step (memory banks: PatchCore) stay at step 0 for ever, so a new epoch counts as progress too
        # (last.ckpt every epoch: an interrupted fit resumes from the last finished epoch).
        return (self._last_global_step_saved, self._last_epoch_saved) == (trainer.global_step, trainer.current_epoch)

    def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is None or self.monitor in monitor_candidates:  # else nothing to rank by this epoch
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        # Lightning writes last.ckpt only in a step where a top-k file was written, so an epoch that
        # did not beat best.ckpt (or had no metric to rank by) would leave last.ckpt an epoch behind:
        # resume would repeat epochs and `--ckpt_path last` would test an older model. Mark the step
        # handled so that last.ckpt follows every epoch.
        self._last_global_step_saved = trainer.global_step

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if not trainer.is_global_zero or "://" in str(filepath):
            # other ranks only join the collective save; remote file systems have no local rename
            super()._save_checkpoint(trainer, filepath)
            self._last_epoch_saved = trainer.current_epoch
            return
        with atomic_path(filepath) as tmp:
            super()._save_checkpoint(trainer, str(tmp))
        self._last_checkpoint_saved = filepath
        self._last_epoch_saved = trainer.current_epoch
        if Path(filepath).name == runs.LAST_CKPT:
            runs.point_latest(Path(filepath).parent.parent)
