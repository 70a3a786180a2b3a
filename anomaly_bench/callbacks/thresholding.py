"""``Thresholding``: operating thresholds fitted on normal validation images, never on test data.

During ``fit``, every validation epoch collects the image scores and map pixels of the normal
validation images per category (the dataset's own validation split, e.g. MVTec LOCO's, otherwise a
seeded hold-out of the training normals the datamodule sets aside because this callback asks for
it) and fits, per category, the image and pixel thresholds that flag ``target_fpr`` of those normals
(``anomaly_bench.metrics.thresholds``). The module keeps the thresholds and the normal scores they
came from (``AnomalyModule.thresholds`` / ``normal_scores``), so ``last.ckpt`` and ``best.ckpt``
carry the thresholds of their own weights. At ``test`` / ``predict`` a different ``target_fpr``
refits from the stored scores; fixed values replace them.

The thresholds reach the Evaluator (precision / recall / F1 at the threshold), the score files
(``pred_label``), the predicted masks and the heat maps. Anomalies never move them: anomalous
validation images (LOCO's validation split has none; a user's might) are left out.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_bench.metrics.thresholds import (
    DEFAULT_TARGET_FPR,
    NormalScores,
    PixelSketch,
    Thresholds,
    as_thresholds,
    fixed_thresholds,
)
from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch

log = logging.getLogger(__name__)

STORED_PIXELS = 100_000  # normal pixel values kept per category in the checkpoint (refits)
ALL_CATEGORIES = "all"  # the key of the thresholds fitted over every category together


class Thresholding(Callback):
    """Fit operating thresholds on normal validation images and apply them at test / predict.

    Args:
        enabled: fit and apply thresholds; when True and a dataset has no validation split of its
            own, the datamodule holds out a seeded share of the training normals for them.
        target_fpr: share of normal images (and of normal pixels) allowed above the thresholds:
            the normal false-positive rate the deployed model aims for (default 1 %).
        image_threshold: a fixed image-score threshold used instead of a fitted one.
        pixel_threshold: a fixed pixel threshold used instead of a fitted one.
        min_normals: fewest normal validation images per category to fit from (a quantile of three
            scores means nothing): a category with fewer gets no threshold, and a warning names it
            and the count. It is not an error, so a fit with a small validation split still ends
            with its checkpoint and its AUROC; predict then gives that category no verdict.
    """

    wants_validation_normals = True

    def __init__(self, enabled: bool = True, target_fpr: float = DEFAULT_TARGET_FPR,
                 image_threshold: float | None = None, pixel_threshold: float | None = None,
                 min_normals: int = 5) -> None:
        if not 0.0 < float(target_fpr) < 1.0:
            raise ValueError(f"Thresholding target_fpr must be in (0, 1), got {target_fpr!r}")
        if int(min_normals) < 1:
            raise ValueError(f"Thresholding min_normals must be at least 1, got {min_normals!r}")
        self.enabled = bool(enabled)
        self.wants_validation_normals = self.enabled and image_threshold is None
        self.target_fpr = float(target_fpr)
        self.image_threshold = image_threshold
        self.pixel_threshold = pixel_threshold
        self.min_normals = int(min_normals)
        self._collected: dict[str, NormalScores] = {}

    # ------------------------------------------------------------------------ collecting
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collected = {}

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.enabled or trainer.sanity_checking or not isinstance(outputs, AnomalyOutput) \
                or not isinstance(batch, Batch):
            return
        labels = batch.label.detach().cpu()
        maps = outputs.anomaly_map.detach().float().cpu()
        scores = outputs.pred_score.detach().float().cpu()
        for i, category in enumerate(batch.category):
            if int(labels[i]) != LABEL_NORMAL:
                continue
            collector = self._collected.setdefault(category, NormalScores(pixel_capacity=STORED_PIXELS))
            collector.update(scores[i:i + 1], maps[i:i + 1])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._collected and not _distributed():
            return
        collected = _gather(self._collected)
        self._collected = {}
        if not collected:
            return
        if len(collected) > 1:
            # one set over every category too: for images whose category is unknown (predict on a folder)
            union = NormalScores(pixel_capacity=STORED_PIXELS)
            for category in sorted(collected):
                union.update(collected[category].image_scores)
                union.pixels.update(collected[category].pixels.values())
            collected[ALL_CATEGORIES] = union
        stored = {category: {"image": torch.from_numpy(c.image_scores.copy()), "pixel": c.pixels.state_dict()}
                  for category, c in collected.items()}
        pl_module.normal_scores = stored
        pl_module.thresholds = self._fit(stored, trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or self.image_threshold is not None:
            return
        if not getattr(pl_module, "normal_scores", None):
            log.warning("Thresholding: no normal validation images were scored during fit, so the model has no "
                        "operating thresholds (predict gives no verdicts); the datamodule needs a validation "
                        "split (data.init_args.validation: train_holdout or validation)")

    # --------------------------------------------------------------------------- fitting
    def _fit(self, stored: dict[str, dict[str, Any]], trainer: Trainer | None) -> dict[str, Thresholds]:
        fixed = self._fixed()
        if fixed is not None:
            return {category: fixed for category in stored} or {"all": fixed}
        out: dict[str, Thresholds] = {}
        split = _validation_source(trainer)
        for category, record in stored.items():
            images = record["image"]
            if len(images) < self.min_normals:
                message = (f"Thresholding: only {len(images)} normal validation image(s) of category {category!r} "
                           f"(at least {self.min_normals} needed to fit a threshold)")
                log.warning("%s; no threshold for it", message)
                continue
            collector = NormalScores(pixel_capacity=STORED_PIXELS)
            collector.update(images)
            collector.pixels = PixelSketch.from_state_dict(record["pixel"])
            out[category] = collector.fit(self.target_fpr, source=split)
        return out

    def _fixed(self) -> Thresholds | None:
        if self.image_threshold is None and self.pixel_threshold is None:
            return None
        return fixed_thresholds(self.image_threshold, self.pixel_threshold)

    def _apply(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            pl_module.thresholds = None
            return
        fixed = self._fixed()
        if fixed is not None:
            pl_module.thresholds = {"all": fixed}
            return
        current = getattr(pl_module, "thresholds", None) or {}
        stored = getattr(pl_module, "normal_scores", None) or {}
        targets = {as_thresholds(t).target_fpr for t in current.values()}
        if stored and targets != {self.target_fpr}:
            pl_module.thresholds = self._fit(stored, trainer)  # a new target: refit, never refine

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer, pl_module)


def _validation_source(trainer: Trainer | None) -> str:
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    mode = getattr(datamodule, "resolved_validation", None) or getattr(datamodule, "validation", None)
    if mode == "validation":
        return "normal images of the dataset's validation split"
    if mode == "train_holdout":
        share = getattr(datamodule, "val_fraction", None)
        return f"normal training images held out from training (val_fraction={share})"
    return "normal validation images"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(collected: dict[str, NormalScores]) -> dict[str, NormalScores]:
    """Every rank's normal scores on every rank (DDP: each rank validated a share of the images)."""
    if not _distributed():
        return collected
    parts: list[dict[str, Any] | None] = [None] * dist.get_world_size()
    local = {c: (n.image_scores, n.pixels.values()) for c, n in collected.items()}
    dist.all_gather_object(parts, local)
    merged: dict[str, NormalScores] = {}
    for part in parts:
        for category, (images, pixels) in (part or {}).items():
            target = merged.setdefault(category, NormalScores(pixel_capacity=STORED_PIXELS))
            target.update(images)
            target.pixels.update(pixels)
    return merged
