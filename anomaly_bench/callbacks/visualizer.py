"""Heat-map pictures: input | ground truth | anomaly-map overlay, a bounded number per category.

Maps stay raw everywhere else; only here are they mapped to colours, with one display range for
the whole test set (low = the smallest map value, high = the 99th percentile of per-image maxima),
so that a brighter picture means a higher score across images, not just within one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.nn.functional as F
from lightning.pytorch import Callback

from anomaly_bench.data.io import DataError, read_image_rgb, read_mask
from anomaly_bench.types import AnomalyOutput, Batch


@dataclass
class _Kept:
    path: str
    category: str
    defect: str
    label: int
    score: float
    mask_paths: tuple[str, ...]
    anomaly_map: np.ndarray  # float32 [h, w], at most display size


class Visualizer(Callback):
    """Write heat-map panels into ``<run_dir>/heatmaps/<category>/`` after test and predict.

    Args:
        enabled: the switch (``--model.init_args.visualizer false`` turns the default one off too).
        max_per_category: pictures kept per category in ``test`` (anomalous images first).
        max_predict: pictures in ``predict`` (None = every image).
        display_size: long side of each panel in pixels.
        folder: sub-folder of the run directory.
        log_images: also send the pictures to loggers that take images (W&B).
    """

    def __init__(self, enabled: bool = True, max_per_category: int = 8, max_predict: int | None = None,
                 display_size: int = 256, folder: str = "heatmaps", log_images: bool = True) -> None:
        self.enabled = enabled
        self.max_per_category = max_per_category
        self.max_predict = max_predict
        self.display_size = display_size
        self.folder = folder
        self.log_images = log_images
        self._kept: list[_Kept] = []
        self._counts: dict[str, int] = {}
        self._low = float("inf")
        self._maxima: list[float] = []

    # ------------------------------------------------------------------ collection
    def _reset(self) -> None:
        self._kept, self._counts, self._low, self._maxima = [], {}, float("inf"), []

    def _collect(self, outputs: Any, batch: Batch, limit: int | None) -> None:
        if not self.enabled or not isinstance(outputs, AnomalyOutput):
            return
        maps = outputs.anomaly_map.detach().float()
        self._low = min(self._low, float(maps.min()))
        self._maxima.extend(maps.flatten(1).amax(1).cpu().tolist())
        h, w = maps.shape[-2:]
        scale = min(1.0, self.display_size / max(h, w))
        if scale < 1.0:
            maps = F.interpolate(maps[:, None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                 mode="bilinear", align_corners=False)[:, 0]
        maps_np = maps.cpu().numpy()
        labels = batch.label.cpu().tolist()
        scores = outputs.pred_score.detach().float().cpu().tolist()
        # anomalous images first within the batch: they are what a reader wants to see
        for i in sorted(range(len(batch.path)), key=lambda j: -labels[j]):
            category = batch.category[i]
            if limit is not None and self._counts.get(category, 0) >= limit:
                continue
            self._counts[category] = self._counts.get(category, 0) + 1
            self._kept.append(_Kept(batch.path[i], category, batch.defect[i], labels[i], scores[i],
                                    tuple(batch.mask_paths[i]) if batch.mask_paths else (), maps_np[i]))

    # --------------------------------------------------------------------- drawing
    def _display_range(self) -> tuple[float, float]:
        high = float(np.percentile(self._maxima, 99)) if self._maxima else 1.0
        low = self._low if np.isfinite(self._low) else 0.0
        return low, max(high, low + 1e-12)

    def render(self, item: _Kept, low: float, high: float) -> np.ndarray:
        """One RGB panel strip for an image (exposed for tests and notebooks)."""
        try:
            image = read_image_rgb(item.path)
        except DataError:
            image = np.zeros((*item.anomaly_map.shape, 3), np.uint8)
        h, w = image.shape[:2]
        scale = self.display_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (w, h)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        gt = np.zeros(image.shape[:2], bool)
        for mask_path in item.mask_paths:
            try:
                mask = (read_mask(mask_path) != 0).astype(np.uint8)
            except DataError:
                continue
            gt |= cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST).astype(bool)
        gt_panel = image.copy()
        gt_panel[gt] = (0.5 * gt_panel[gt] + [127, 0, 0]).astype(np.uint8)
        contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(gt_panel, contours, -1, (255, 0, 0), 1)
        amap = cv2.resize(item.anomaly_map.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        norm = np.clip((amap - low) / (high - low), 0.0, 1.0)
        heat = cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        overlay = (0.5 * image + 0.5 * heat).astype(np.uint8)
        strip = np.concatenate([image, gt_panel, overlay], axis=1)
        cv2.putText(strip, f"score {item.score:.4g}", (2 * size[0] + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        return strip

    def _write_all(self, trainer: Any, stage: str) -> None:
        if not self.enabled or not self._kept:
            return
        low, high = self._display_range()
        root = Path(trainer.default_root_dir) / self.folder
        logged: dict[str, list[np.ndarray]] = {}
        for item in self._kept:
            strip = self.render(item, low, high)
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{item.defect}_{Path(item.path).stem}") + ".png"
            out = root / re.sub(r"[^A-Za-z0-9_.-]", "_", item.category) / name
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
            logged.setdefault(item.category, []).append(strip)
        if self.log_images:
            self._log_to_loggers(trainer, logged, stage)

    @staticmethod
    def _log_to_loggers(trainer: Any, images: dict[str, list[np.ndarray]], stage: str) -> None:
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if log_image is None:
                continue
            for category, strips in images.items():
                try:
                    log_image(key=f"{stage}/heatmaps/{category}", images=strips[:16])
                except Exception as err:  # a logger must never fail a run
                    print(f"[anomaly_bench] could not log heat maps to {type(logger).__name__}: {err}")

    # ----------------------------------------------------------------------- hooks
    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset()

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch, self.max_per_category)

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write_all(trainer, "test")
        self._reset()

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset()

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch, self.max_predict)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write_all(trainer, "predict")
        self._reset()

