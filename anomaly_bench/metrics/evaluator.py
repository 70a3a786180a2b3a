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

from anomaly_bench.metrics.ground_truth import GroundTruth, GroundTruthCache
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.report import (
    COUNT_COLUMNS,
    LOCO_FOLDERS,
    ReportConfig,
    category_result,
    format_table,
    image_tag,
    stable_id,
    with_mean_row,
    write_tables,
)
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, AnomalyOutput, Batch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _parse_resolution(resolution: str | int | Sequence[int]) -> str | tuple[int, int]:
    if isinstance(resolution, str):
        if resolution in ("native", "model"):
            return resolution
        if resolution.isdigit():
            return (int(resolution), int(resolution))
        raise ValueError(f"Evaluator resolution must be 'native', 'model', an int or [h, w], got {resolution!r}")
    if isinstance(resolution, int):
        return (resolution, resolution)
    values = tuple(int(v) for v in resolution)
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"Evaluator resolution must be [h, w] with positive sizes, got {resolution!r}")
    return values


class _EpochState:
    """Metric states of one loop (validation or test) plus the category names seen."""

    def __init__(self, evaluator: "Evaluator", with_pixels: bool) -> None:
        self.images = ImageRankingMetric(sync_on_compute=False)
        self.pixels = evaluator._new_pixel_metric() if with_pixels else None
        self.names: dict[int, str] = {}


class Evaluator(Callback):
    """Computes image and pixel metrics per category at the end of the test loop.

    Args:
        resolution: evaluation resolution. ``"native"`` (default): each image's ground-truth size
            (masks read from ``batch.mask_paths``); ``"model"``: the size of ``batch.mask``; an int
            or ``[h, w]``: that size (``batch.mask`` resized nearest). Maps are resized bilinearly.
        mode: ``"auto"`` | ``"exact"`` | ``"binned"`` for pixel curves (image metrics are always exact).
        fpr_limit: AU-PRO integration limit (official: 0.3).
        spro_limits: AU-sPRO limits for MVTec LOCO (official headline 0.05, also 0.3).
        exact_max_pixels: ``auto`` uses exact curves up to this many pixels per category.
        num_bins, num_positive_bins, sample_size: binned mode's data-driven edges.
        store_dtype: dtype of the stored maps (``float32``; ``float16`` halves memory, creates ties).
        oracle_f1: add ``image_f1max_oracle`` / ``pixel_f1max_oracle`` (thresholds chosen on test labels).
        plot_curves: save ROC / PR / PRO plots to ``<run_dir>/curves/<category>.png``.
        write_files: write ``metrics.csv`` / ``metrics.json`` into ``trainer.default_root_dir``.
        validation: compute ``val/image_auroc`` when the validation set has both classes.
        compute_device: ``"auto"`` (the module's device: a GPU sorts fast) or ``"cpu"``.
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        if mode not in ("auto", "exact", "binned"):
            raise ValueError(f"Evaluator mode must be 'auto', 'exact' or 'binned', got {mode!r}")
        if not 0 < fpr_limit <= 1 or any(not 0 < s <= 1 for s in spro_limits):
            raise ValueError(f"integration limits must be in (0, 1], got fpr_limit={fpr_limit}, spro_limits={spro_limits}")
        if store_dtype not in _DTYPES:
            raise ValueError(f"Evaluator store_dtype must be one of {sorted(_DTYPES)}, got {store_dtype!r}")
        self.resolution = _parse_resolution(resolution)
        self.mode = mode
        self.fpr_limit = float(fpr_limit)
        self.spro_limits = tuple(float(s) for s in spro_limits)
        self.exact_max_pixels = int(exact_max_pixels)
        self.num_bins = int(num_bins)
        self.num_positive_bins = int(num_positive_bins)
        self.sample_size = int(sample_size)
        self.store_dtype = store_dtype
        self.oracle_f1 = oracle_f1
        self.plot_curves = plot_curves
        self.write_files = write_files
        self.validation = validation
        self.compute_device = compute_device
        self.results: list[dict[str, Any]] = []
        self.modes_used: dict[str, str] = {}
        self._truths = GroundTruthCache()
        self._test: _EpochState | None = None
        self._val: _EpochState | None = None

    # ------------------------------------------------------------------------------ config
    def _new_pixel_metric(self) -> PixelRankingMetric:
        return PixelRankingMetric(
            mode=self.mode, fpr_limit=self.fpr_limit, exact_max_pixels=self.exact_max_pixels,
            num_bins=self.num_bins, num_positive_bins=self.num_positive_bins, sample_size=self.sample_size,
            store_dtype=_DTYPES[self.store_dtype], sync_on_compute=False,
        )

    def report_config(self) -> ReportConfig:
        resolution = self.resolution if isinstance(self.resolution, str) else list(self.resolution)
        return ReportConfig(
            self.fpr_limit, self.spro_limits, self.oracle_f1, resolution, self.mode,
            {"exact_max_pixels": self.exact_max_pixels, "num_bins": self.num_bins,
             "num_positive_bins": self.num_positive_bins, "sample_size": self.sample_size,
             "store_dtype": self.store_dtype},
        )

    # --------------------------------------------------------------------------- updating
    def _truth(self, batch: Batch, i: int, label: int) -> GroundTruth | None:
        """Ground truth of sample ``i`` at the evaluation size; None when an anomalous image has none."""
        mask_paths = tuple(batch.mask_paths[i]) if i < len(batch.mask_paths) else ()
        defects = tuple(batch.defects[i]) if i < len(batch.defects) else ()
        loco_channels = bool(defects) or batch.defect[i] in LOCO_FOLDERS
        if self.resolution == "native":
            if label == LABEL_NORMAL:
                height, width = (int(v) for v in batch.orig_size[i].tolist())
                return GroundTruth.normal(height, width)
            if not mask_paths:
                return None
            truth = self._truths.from_files(mask_paths, defects, None, with_channels=loco_channels)
            expected = tuple(int(v) for v in batch.orig_size[i].tolist())
            if (truth.height, truth.width) != expected:
                raise ValueError(
                    f"mask {mask_paths[0]} is {truth.height}x{truth.width} but its image {batch.path[i]} is "
                    f"{expected[0]}x{expected[1]} (batch.orig_size): ground truth must match the image"
                )
            return truth
        size = tuple(batch.mask.shape[-2:]) if self.resolution == "model" else self.resolution
        if label == LABEL_NORMAL:
            return GroundTruth.normal(*size)
        if mask_paths and loco_channels:
            return self._truths.from_files(mask_paths, defects, size, with_channels=True)
        if not mask_paths and not bool(batch.mask[i].any()):
            return None
        return self._truths.from_array(batch.path[i], batch.mask[i], size)

    def _update(self, state: _EpochState, outputs: Any, batch: Any) -> None:
        if not isinstance(outputs, AnomalyOutput):
            raise TypeError(
                f"Evaluator expects the step to return an AnomalyOutput, got {type(outputs).__name__}; "
                "return self.score_batch(batch) from validation_step/test_step"
            )
        if not isinstance(batch, Batch):
            raise TypeError(f"Evaluator expects a Batch from the dataloader, got {type(batch).__name__}")
        labels = [int(v) for v in batch.label.tolist()]
        keep = [i for i, label in enumerate(labels) if label in (LABEL_NORMAL, LABEL_ANOMALOUS)]
        if not keep:
            return
        groups, tags, keys = [], [], []
        for i in keep:
            group = stable_id(batch.category[i])
            known = state.names.setdefault(group, batch.category[i])
            if known != batch.category[i]:
                raise ValueError(f"category ids collide: {known!r} and {batch.category[i]!r}")
            groups.append(group)
            tags.append(image_tag(labels[i], batch.defect[i]))
            keys.append(stable_id(batch.path[i]))
        truths = [self._truth(batch, i, labels[i]) for i in keep] if state.pixels is not None else [None] * len(keep)
        has_truth = [truth is not None for truth in truths]
        scores = outputs.pred_score.detach().float().cpu()
        state.images.update(scores[keep], torch.tensor([labels[i] for i in keep]), tags, groups, keys, has_truth)
        if state.pixels is not None:
            chosen = [n for n, ok in enumerate(has_truth) if ok]
            if chosen:
                maps = outputs.anomaly_map.detach().cpu()
                state.pixels.update(
                    [maps[keep[n]] for n in chosen],
                    ground_truths=[truths[n] for n in chosen],
                    tags=[tags[n] for n in chosen], groups=[groups[n] for n in chosen], keys=[keys[n] for n in chosen],
                )

    # ---------------------------------------------------------------------- Lightning hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val = _EpochState(self, with_pixels=False) if self.validation else None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val is not None:
            self._update(self._val, outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._val = self._val, None
        if state is None:
            return
        names = self._synced(trainer, pl_module, state)
        value = None
        if trainer.is_global_zero:
            values = []
            for group in sorted(names):
                curves = state.images.curves(group=group)
                if curves.points.total_positives and curves.points.total_negatives:
                    values.append(curves.auroc())
            value = sum(values) / len(values) if values else None
        value = trainer.strategy.broadcast(value, src=0)
        if value is not None and not trainer.sanity_checking:
            pl_module.log("val/image_auroc", float(value), sync_dist=False)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test = _EpochState(self, with_pixels=True)
        self.results = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._test is None:  # e.g. a test loop started without on_test_epoch_start (manual use)
            self._test = _EpochState(self, with_pixels=True)
        self._update(self._test, outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._test = self._test, None
        if state is None:
            return
        names = self._synced(trainer, pl_module, state)
        rows = None
        if trainer.is_global_zero:
            rows = self._finish(trainer, state, names, device=self._device(pl_module))
        rows = trainer.strategy.broadcast(rows, src=0)
        self.results = rows or []
        self._log(trainer, pl_module, self.results)

    # ------------------------------------------------------------------------- epoch end
    def _device(self, pl_module: LightningModule) -> torch.device:
        if self.compute_device == "auto":
            return pl_module.device if pl_module.device.type == "cuda" else torch.device("cpu")
        return torch.device(self.compute_device)

    def _synced(self, trainer: Trainer, pl_module: LightningModule, state: _EpochState) -> dict[int, str]:
        """Gather the states and category names of every rank into every rank (DDP)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return dict(state.names)
        gathered: list[dict[int, str]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, state.names)
        names = {k: v for part in gathered for k, v in part.items()}
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
        return names

    def _finish(self, trainer: Trainer, state: _EpochState, names: dict[int, str], device: torch.device) -> list[dict]:
        config = self.report_config()
        if state.pixels is not None:
            state.pixels.compute_device = device
        results = []
        self.modes_used = {}
        for group, name in sorted(names.items(), key=lambda item: item[1]):
            result = category_result(name, group, state.images, state.pixels, config)
            if result.pixel_curves:
                self.modes_used[name] = result.pixel_curves["all"].mode if "all" in result.pixel_curves else "-"
            elif result.row.get("num_anomalous"):
                warnings.warn(f"no pixel metrics for {name!r}: some anomalous test images have no ground-truth mask",
                              stacklevel=2)
            results.append(result)
        rows = with_mean_row([r.row for r in results])
        run_dir = trainer.default_root_dir
        if self.write_files and rows:
            write_tables(rows, run_dir, config, {"modes_used": self.modes_used, "stage": "test"})
        if self.plot_curves:
            try:
                from anomaly_bench.metrics.plots import plot_category, safe_name

                for result in results:
                    name = result.row["category"]
                    plot_category(f"{run_dir}/curves/{safe_name(name)}.png", name, result.image_curves,
                                  result.pixel_curves, self.fpr_limit, self.spro_limits[0] if self.spro_limits else 0.05)
            except Exception as err:  # a plot must never cost the numbers
                warnings.warn(f"could not save curve plots: {err}", stacklevel=2)
        if rows:
            log.info("test metrics:\n%s", format_table(rows))
        return rows

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
        from anomaly_bench.metrics.report import ordered_columns

        columns = ordered_columns(rows)
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                logger.log_table(key="test/metrics", columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            except Exception as err:  # W&B trouble must never fail a run
                warnings.warn(f"could not log the metrics table to W&B: {err}", stacklevel=2)
