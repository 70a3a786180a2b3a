"""Checkpointing defaults: always ``last.ckpt``; ``best.ckpt`` when there is a validation metric to rank by."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` every epoch and ``best.ckpt`` by ``monitor``.

    Anomaly validation sets often hold normal images only (held-out training normals, LOCO's
    ``validation/``), so the monitored metric may never be logged. Lightning's ModelCheckpoint then
    raises; here the best checkpoint is simply not written and ``--ckpt_path best`` falls back to
    ``last`` (see ``anomaly_bench.runs.resolve_checkpoint``).
    """

    def __init__(self, dirpath: str | None = None, monitor: str | None = "val/image_auroc",
                 mode: str = "max", **kwargs: Any) -> None:
        kwargs.setdefault("filename", "best")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("save_top_k", 1)
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, monitor=monitor, mode=mode, **kwargs)

    def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            # Nothing to rank by this epoch. Lightning writes last.ckpt only in a step where a
            # top-k save happened, so mark this step as handled: last.ckpt is still written.
            self._last_global_step_saved = trainer.global_step
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
