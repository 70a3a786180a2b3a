"""The Evaluator: a Lightning callback that turns the raw ``AnomalyOutput`` of every test batch into
``metrics.csv`` / ``metrics.json``, logger scalars, curve plots and ``self.results``.

It sees the outputs the model returned, whatever other callbacks run, and never changes them.
Maps are stored as returned (model resolution, CPU) and resized to the evaluation resolution only
when the epoch's metrics are computed (see ``pixel.py`` for the memory plan). Under DDP every rank
stores its own images; the states are gathered (torchmetrics sync) before rank 0 computes.

YAML::

    trainer:
      callbacks:
        - class_path: anomaly_bench.metrics.Evaluator
          init_args: {resolution: native, mode: auto, fpr_limit: 0.3}
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_bench.metrics.accumulator import (
    EvalItem,
    EvaluationAccumulator,
    EvaluationConfig,
    EvaluationResult,
)
from anomaly_bench.metrics.ground_truth import GroundTruthCache
from anomaly_bench.metrics.report import COUNT_COLUMNS, format_table, ordered_columns
from anomaly_bench.types import AnomalyOutput, Batch

log = logging.getLogger(__name__)


class Evaluator(Callback):
    """Computes image and pixel metrics per category at the end of the test loop.

    When the module has operating thresholds (``pl_module.thresholds``, fitted on normal images,
    see ``metrics.thresholds``), the rows add ``image_precision / _recall / _f1`` (and the pixel
    ones) at them and ``metrics.json`` records them under ``thresholds``.

    Args:
        enabled: the switch (``Evaluator(enabled=False)`` among ``trainer.callbacks`` turns the
            default one off: no metrics, no files).
        resolution: evaluation resolution. ``"native"`` (default): each image's ground-truth size
            (masks read from ``batch.mask_paths``); ``"model"``: the size of ``batch.mask``; an int
            or ``[h, w]``: that size (masks resized nearest). Maps are resized bilinearly.
        mode: ``"auto"`` | ``"exact"`` | ``"binned"`` for pixel curves (image metrics are always exact).
        fpr_limit: AU-PRO integration limit (official: 0.3).
        spro_limits: AU-sPRO limits for MVTec LOCO (official headline 0.05, also 0.3).
        exact_max_pixels: ``auto`` uses exact curves up to this many pixels per category.
        num_bins: binned mode: edges from a sample of all scores.
        num_positive_bins: binned mode: edges from the positive scores.
        sample_size: binned mode: size of the sample of all scores.
        store_dtype: dtype of the stored maps (``float32``; ``float16`` halves memory, creates ties).
        oracle_f1: add ``image_f1max_oracle`` / ``pixel_f1max_oracle`` (thresholds chosen on test labels).
        plot_curves: save ROC / PR / PRO plots to ``<run_dir>/curves/<category>.png``.
        write_files: write ``metrics.csv`` / ``metrics.json`` into ``trainer.default_root_dir``.
        validation: compute ``val/image_auroc`` when the validation set has both classes.
        compute_device: ``"auto"`` (the module's device: a GPU sorts fast) or ``"cpu"``.
        wandb_curves: log each category's ROC / PR / PRO curves as W&B plots with a ``WandbLogger``.
        wandb_curve_points: points per W&B curve at most.
        protocol: the name of the evaluation protocol, recorded in ``metrics.json`` (``default`` = our
            honest one: native resolution, last checkpoint; ``paper`` = ``configs/protocols/paper.yaml``,
            scoring as the official code does). Reports mark paper-protocol numbers.
    """

    def __init__(
        self,
        enabled: bool = True,
        resolution: str | int | Sequence[int] = "native",
        mode: str = "auto",
        fpr_limit: float = 0.3,
        spro_limits: Sequence[float] = (0.05, 0.3),
        exact_max_pixels: int = 50_000_000,
        num_bins: int = 16384,
        num_positive_bins: int = 4096,
        sample_size: int = 2_000_000,
        store_dtype: str = "float32",
        oracle_f1: bool = True,
        plot_curves: bool = True,
        write_files: bool = True,
        validation: bool = True,
        compute_device: str = "auto",
        wandb_curves: bool = True,
        wandb_curve_points: int = 200,
        protocol: str = "default",
    ) -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.config = EvaluationConfig(
            resolution, mode, float(fpr_limit), tuple(spro_limits), int(exact_max_pixels), int(num_bins),
            int(num_positive_bins), int(sample_size), store_dtype, oracle_f1,
        )
        self.plot_curves = plot_curves
        self.write_files = write_files
        self.validation = validation
        self.compute_device = compute_device
        self.wandb_curves = wandb_curves
        self.wandb_curve_points = int(wandb_curve_points)
        self.protocol = str(protocol)
        self.results: list[dict[str, Any]] = []
        self.modes_used: dict[str, str] = {}
        self._truths = GroundTruthCache()
        self._test: EvaluationAccumulator | None = None
        self._val: EvaluationAccumulator | None = None

    # the settings, read where callers used to find them
    resolution = property(lambda self: self.config.resolution)
    mode = property(lambda self: self.config.mode)
    fpr_limit = property(lambda self: self.config.fpr_limit)
    spro_limits = property(lambda self: self.config.spro_limits)

    def report_config(self):
        """The settings ``metrics.json`` records (``report.ReportConfig``)."""
        return self.config.report_config()

    # --------------------------------------------------------------------------- updating
    def _accumulator(self, with_pixels: bool) -> EvaluationAccumulator:
        return EvaluationAccumulator(self.config, with_pixels=with_pixels, truths=self._truths)

    @staticmethod
    def _update(state: EvaluationAccumulator, outputs: Any, batch: Any, pl_module: Any) -> None:
        if not isinstance(outputs, AnomalyOutput):
            raise TypeError(
                f"Evaluator expects the step to return an AnomalyOutput, got {type(outputs).__name__}; "
                "return self.score_batch(batch) from validation_step/test_step"
            )
        if not isinstance(batch, Batch):
            raise TypeError(f"Evaluator expects a Batch from the dataloader, got {type(batch).__name__}")
        maps = outputs.anomaly_map if state.pixels is not None else None
        state.update(outputs.pred_score, maps, EvalItem.from_batch(batch), source=f"model {type(pl_module).__name__}")

    # ---------------------------------------------------------------------- Lightning hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val = self._accumulator(with_pixels=False) if self.enabled and self.validation else None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val is not None:
            self._update(self._val, outputs, batch, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._val = self._val, None
        if state is None:
            return
        self._synced(pl_module, state)
        value = state.mean_image_auroc() if trainer.is_global_zero else None
        value = trainer.strategy.broadcast(value, src=0)
        if value is not None and not trainer.sanity_checking:
            pl_module.log("val/image_auroc", float(value), sync_dist=False)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test = self._accumulator(with_pixels=True) if self.enabled else None
        self.results = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.enabled:
            return
        if self._test is None:  # e.g. a test loop started without on_test_epoch_start (manual use)
            self._test = self._accumulator(with_pixels=True)
        self._update(self._test, outputs, batch, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._test = self._test, None
        if state is None:
            return
        self._synced(pl_module, state)
        result = None
        if trainer.is_global_zero:
            result = state.finish(getattr(pl_module, "thresholds", None), device=self._device(pl_module))
            self._write(trainer, result)
        rows = trainer.strategy.broadcast(result.rows if result is not None else None, src=0)
        self.results = rows or []
        self._log(trainer, pl_module, self.results)
        if result is not None and self.wandb_curves:
            from anomaly_bench.metrics.wandb_curves import log_wandb_curves

            log_wandb_curves(trainer.loggers, result.categories, self.wandb_curve_points)

    # ------------------------------------------------------------------------- epoch end
    def _device(self, pl_module: LightningModule) -> torch.device:
        if self.compute_device == "auto":
            return pl_module.device if pl_module.device.type == "cuda" else torch.device("cpu")
        return torch.device(self.compute_device)

    @staticmethod
    def _synced(pl_module: LightningModule, state: EvaluationAccumulator) -> None:
        """Gather the states and category names of every rank into every rank (DDP)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return
        gathered: list[dict[int, str]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, state.names)
        state.names = {k: v for part in gathered for k, v in part.items()}
        on_gpu = torch.distributed.get_backend() == "nccl"
        for metric in (state.images, state.pixels):
            if metric is None:
                continue
            if on_gpu:
                metric.to(pl_module.device)
            metric.sync(should_sync=True)
            metric._is_synced = False  # keep the gathered states; they are only read from here on
            if on_gpu:
                metric.to("cpu")

    def _write(self, trainer: Trainer, result: EvaluationResult) -> None:
        self.modes_used = dict(result.modes_used)
        run_dir = trainer.default_root_dir
        if self.write_files:
            result.write(run_dir, self.config, {"stage": "test", "protocol": self.protocol}, plots=False)
        if self.plot_curves:
            result.plot(run_dir, self.config)
        if result.rows:
            log.info("test metrics:\n%s", format_table(result.rows))

    def _log(self, trainer: Trainer, pl_module: LightningModule, rows: list[dict]) -> None:
        numeric = lambda row: {k: float(v) for k, v in row.items()  # noqa: E731
                               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in COUNT_COLUMNS}
        for row in rows:
            if row["category"] == "mean":
                for key, value in numeric(row).items():
                    pl_module.log(f"test/{key}", value, sync_dist=False)
        per_category = {f"test/{row['category']}/{k}": v for row in rows if row["category"] != "mean"
                        for k, v in numeric(row).items()}
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            try:
                if per_category:
                    logger.log_metrics(per_category, step=trainer.global_step)
            except Exception as err:  # a logger must never fail the run
                warnings.warn(f"logger {type(logger).__name__} rejected per-category metrics: {err}", stacklevel=2)
        self._log_wandb_table(trainer, rows)

    @staticmethod
    def _log_wandb_table(trainer: Trainer, rows: list[dict]) -> None:
        if not rows:
            return
        try:
            from lightning.pytorch.loggers import WandbLogger
        except Exception:  # pragma: no cover - lightning without wandb support
            return
        columns = ordered_columns(rows)
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                logger.log_table(key="test/metrics", columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            except Exception as err:  # W&B trouble must never fail a run
                warnings.warn(f"could not log the metrics table to W&B: {err}", stacklevel=2)
