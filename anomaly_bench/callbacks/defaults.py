"""The default callbacks: the one place they are chosen, for the CLI and the plain Python API alike.

``AnomalyModule.configure_callbacks`` returns ``default_callbacks(trainer, module)``:

=====================  ==============================================================
``RunDirectory``       every file of a run in ``<root>/<Model>/<Data>/<category>/version_N``
``Evaluator``          metrics per category after ``test`` (``metrics.csv`` / ``.json``)
``Visualizer``         heat-map pictures after ``test`` / ``predict``
``Thresholding``       operating thresholds fitted on normal validation images (verdicts, masks)
``ScoreWriter``        ``scores.csv`` / ``predictions.csv`` and predicted masks
``TestStatsRecorder``  ``test_stats.json``: images/s, peak memory (for the report)
``EpochSeed``          reseeding per epoch, so a resumed run equals an uninterrupted one
``BestAndLastCheckpoint``  ``last.ckpt`` every epoch (+ ``best.ckpt`` when validation ranks)
``LossProgressBar``    replaces Lightning's default bar: the losses, readable, no version
=====================  ==============================================================

A callback of one of these types that the user put into ``trainer.callbacks`` always wins (it is
kept and no default of that type is added): ``Visualizer(enabled=False)`` switches the pictures
off, an ``Evaluator(fpr_limit=0.05)`` changes the metrics. Lightning's own automatic
``ModelCheckpoint`` (added when the user configured none) is replaced by ours.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from anomaly_bench.callbacks.checkpoint import BestAndLastCheckpoint
from anomaly_bench.callbacks.progress import readable_progress_bar
from anomaly_bench.callbacks.rundir import RunDirectory
from anomaly_bench.callbacks.scores import ScoreWriter
from anomaly_bench.callbacks.seeding import EpochSeed
from anomaly_bench.callbacks.test_stats import TestStatsRecorder
from anomaly_bench.callbacks.thresholding import Thresholding
from anomaly_bench.callbacks.visualizer import Visualizer
from anomaly_bench.metrics.evaluator import Evaluator


def _is_lightnings_automatic_checkpoint(callback: Callback) -> bool:
    # Trainer(enable_checkpointing=True) without a ModelCheckpoint appends a bare ModelCheckpoint()
    return (type(callback) is ModelCheckpoint and callback.dirpath is None and callback.monitor is None
            and callback.save_last is None)


def default_callbacks(trainer: Trainer | None, module: LightningModule) -> list[Callback]:
    """The default callbacks ``module`` does not find among ``trainer.callbacks`` already.

    Args:
        trainer: the trainer the module is attached to (None outside a trainer: every default).
        module: the AnomalyModule asking (its seed comes from ``seed_everything``).
    """
    present = list(trainer.callbacks) if trainer is not None else []
    checkpointing = trainer is None or any(isinstance(cb, ModelCheckpoint) for cb in present)
    user_checkpoint = any(isinstance(cb, ModelCheckpoint) and not _is_lightnings_automatic_checkpoint(cb)
                          for cb in present)
    wanted: list[tuple[type[Callback], Any]] = [
        (RunDirectory, RunDirectory),
        (Thresholding, Thresholding),
        (Evaluator, Evaluator),
        (Visualizer, Visualizer),
        (ScoreWriter, ScoreWriter),
        (EpochSeed, EpochSeed.from_environment),
        (TestStatsRecorder, TestStatsRecorder),
    ]
    callbacks = [factory() for kind, factory in wanted if not any(isinstance(cb, kind) for cb in present)]
    if checkpointing and not user_checkpoint:
        callbacks.append(BestAndLastCheckpoint())
    # only where Lightning put its own default bar (never when the user disabled or chose one)
    bar = readable_progress_bar(present)
    if bar is not None:
        callbacks.append(bar)
    return callbacks
