"""Per-image results: ``scores.csv`` after test, ``predictions.csv`` after predict, and a predicted
mask per image when the model has operating thresholds.

Columns: ``path, category, defect, label, pred_score`` (raw), ``pred_label`` (1 = anomalous at the
image threshold, empty without thresholds), ``image_threshold``, ``normalized_score`` (the score on
the display scale, 1.0 = the threshold; never used by the metrics), ``map_max``, ``map_mean`` and
``mask_file`` (the predicted mask, relative to the run directory). Masks are PNGs (255 = anomalous)
at each image's native size, in ``masks/<test|predict>/<category>/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.nn.functional as F
from lightning.pytorch import Callback

from anomaly_bench.atomic import atomic_write_bytes, atomic_write_text
from anomaly_bench.callbacks.distributed import gather_rows
from anomaly_bench.callbacks.rundir import run_dir_of
from anomaly_bench.metrics.thresholds import thresholds_for
from anomaly_bench.types import LABEL_UNKNOWN, AnomalyOutput, Batch

COLUMNS = ["path", "category", "defect", "label", "pred_score", "pred_label", "image_threshold", "normalized_score",
           "map_max", "map_mean", "mask_file"]
MASK_FOLDER = "masks"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def image_file_name(defect: str, path: str, label: int) -> str:
    """File name of an image's predicted mask or heat map inside its category folder.

    A dataset's images are unique by defect folder and file stem (``crack_000.png``). Images of a
    user's folder (``predict``, label unknown) may share a stem across sub-folders (``a/000.png``,
    ``b/000.png``), so their names carry a short hash of the full path: one image never overwrites
    another's outputs, whichever process (DDP rank) writes it.
    """
    stem = Path(path).stem
    if int(label) == LABEL_UNKNOWN:
        return safe_name(f"{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}") + ".png"
    return safe_name(f"{defect}_{stem}") + ".png"


def clear_stage_outputs(trainer: Any, *folders: str) -> None:
    """Remove a previous run of this stage's per-image outputs (``masks/predict`` ...) before writing.

    The stage's CSV is replaced whole; without this, files of images the new run does not score (an
    earlier predict on another folder, one that failed half-way) would stay beside it unlisted.
    Rank 0 removes them and every rank waits, so no rank writes into a folder being removed.
    """
    if trainer.is_global_zero:
        run_dir = run_dir_of(trainer)
        for folder in folders:
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    trainer.strategy.barrier("clear_stage_outputs")


class ScoreWriter(Callback):
    """Write one row per image (raw score, verdict at the threshold) and its predicted mask.

    The CSV is what the benchmark grid and users' own analyses read; the metrics never depend on it.

    Args:
        test_file: file name (in the run directory) of the per-image scores written after ``test``.
        predict_file: file name (in the run directory) of the per-image predictions after ``predict``.
        write_masks: also write each image's predicted mask (needs a pixel threshold).
    """

    def __init__(self, test_file: str = "scores.csv", predict_file: str = "predictions.csv",
                 write_masks: bool = True) -> None:
        self.test_file = test_file
        self.predict_file = predict_file
        self.write_masks = write_masks
        self._rows: list[dict[str, Any]] = []

    def _collect(self, trainer: Any, pl_module: Any, outputs: Any, batch: Batch, stage: str) -> None:
        if not isinstance(outputs, AnomalyOutput):
            return
        maps = outputs.anomaly_map.detach().float()
        scores = outputs.pred_score.detach().float().cpu().tolist()
        maxes = maps.flatten(1).amax(1).cpu().tolist()
        means = maps.flatten(1).mean(1).cpu().tolist()
        labels = batch.label.cpu().tolist()
        run_dir = run_dir_of(trainer)
        thresholds = getattr(pl_module, "thresholds", None)
        for i, path in enumerate(batch.path):
            category = batch.category[i]
            chosen = thresholds_for(thresholds, category)
            row = {"path": path, "category": category, "defect": batch.defect[i], "label": labels[i],
                   "pred_score": scores[i], "pred_label": "", "image_threshold": "", "normalized_score": "",
                   "map_max": maxes[i], "map_mean": means[i], "mask_file": ""}
            if chosen is not None and chosen.image is not None:
                row["pred_label"] = int(scores[i] >= chosen.image)
                row["image_threshold"] = chosen.image
                try:
                    row["normalized_score"] = float(chosen.normalised_image_score(scores[i]))
                except ValueError:
                    pass
            if self.write_masks and chosen is not None and chosen.pixel is not None:  # each rank its own images
                relative = Path(MASK_FOLDER) / stage / safe_name(category) / \
                    image_file_name(batch.defect[i], path, labels[i])
                size = tuple(int(v) for v in batch.orig_size[i].tolist())
                self._write_mask(run_dir / relative, maps[i], size, chosen.pixel)
                row["mask_file"] = str(relative)
            self._rows.append(row)

    @staticmethod
    def _write_mask(path: Path, anomaly_map: Any, size_hw: tuple[int, int], threshold: float) -> None:
        native = F.interpolate(anomaly_map[None, None], size=size_hw, mode="bilinear", align_corners=False)[0, 0]
        mask = ((native >= threshold).cpu().numpy().astype(np.uint8)) * 255
        ok, encoded = cv2.imencode(".png", mask)
        if ok:
            atomic_write_bytes(path, encoded.tobytes(), fsync=False)

    def _write(self, trainer: Any, name: str) -> None:
        rows = gather_rows(self._rows)
        self._rows = []
        if not trainer.is_global_zero or not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["category"], r["path"])))
        atomic_write_text(run_dir_of(trainer) / name, buffer.getvalue())

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._rows = []
        if self.write_masks:
            clear_stage_outputs(trainer, f"{MASK_FOLDER}/test")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._collect(trainer, pl_module, outputs, batch, "test")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, self.test_file)

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._rows = []
        if self.write_masks:
            clear_stage_outputs(trainer, f"{MASK_FOLDER}/predict")

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._collect(trainer, pl_module, outputs, batch, "predict")

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, self.predict_file)
