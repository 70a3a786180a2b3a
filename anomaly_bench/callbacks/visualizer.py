"""Heat maps a person can read, and the gallery the HTML report shows.

After ``test``, per category: a seeded, method-independent choice of images (``callbacks.gallery``:
normal images and at least one of every defect type, the same images for every method of a grid)
is drawn as titled panels: image | ground truth | anomaly map with a colour bar | predicted mask.
The title gives the verdict and the score; the colour bar marks the pixel threshold.

Colours: one range per category, taken from the *normal validation* pixels the thresholds were
fitted on (from their median to twice the threshold's distance above it, so the threshold sits
in the middle of the bar and a normal image stays dark). Never from the batch or from the image
itself: a brighter picture means a higher score. Without thresholds the range comes from the
whole test set of the category, and the picture says so. Maps stay raw everywhere else.

After ``predict`` (no ground truth): image | anomaly map | predicted mask, one picture per image
(up to ``max_predict``), into ``heatmaps/predict/`` so a prediction never overwrites test pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from lightning.pytorch import Callback

from anomaly_bench.atomic import atomic_write_bytes
from anomaly_bench.callbacks.gallery import GalleryCollector, GalleryEntry
from anomaly_bench.callbacks.rundir import run_dir_of
from anomaly_bench.callbacks.scores import clear_stage_outputs, image_file_name, safe_name
from anomaly_bench.data.io import DataError, read_ground_truth, read_image_rgb
from anomaly_bench.metrics.thresholds import Thresholds, thresholds_for
from anomaly_bench.types import AnomalyOutput, Batch

COLORMAP = "inferno"


@dataclass
class Picture:
    """What one heat-map picture shows."""

    path: str
    category: str
    defect: str
    label: int
    score: float
    anomaly_map: np.ndarray  # raw, at most display size
    mask_paths: tuple[str, ...] = ()


def display_range(thresholds: Thresholds | None, fallback: tuple[float, float]) -> tuple[float, float, str]:
    """(low, high, where it came from) of a category's colour scale.

    With a pixel threshold t and the median normal validation pixel m: [m, m + 2 (t - m)], so t is
    the middle of the colour bar. Otherwise ``fallback`` (the category's test-set range).
    """
    if thresholds is not None and thresholds.pixel is not None and thresholds.pixel_reference is not None \
            and thresholds.pixel > thresholds.pixel_reference:
        low = float(thresholds.pixel_reference)
        return low, low + 2.0 * (float(thresholds.pixel) - low), "normal validation pixels"
    low, high = fallback
    return float(low), float(max(high, low + 1e-12)), "this category's test maps (no thresholds)"


def verdict(score: float, thresholds: Thresholds | None) -> str:
    if thresholds is None or thresholds.image is None:
        return f"score {score:.4g} (no threshold)"
    state = "ANOMALOUS" if score >= thresholds.image else "normal"
    return f"{state}: score {score:.4g} (threshold {thresholds.image:.4g})"


def render(picture: Picture, thresholds: Thresholds | None, value_range: tuple[float, float, str],
           display_size: int = 256, with_truth: bool = True) -> np.ndarray:
    """One RGB picture (uint8 [H, W, 3]) of titled panels; exposed for tests and notebooks."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    try:
        image = read_image_rgb(picture.path)
    except DataError:
        image = np.zeros((*picture.anomaly_map.shape, 3), np.uint8)
    h, w = image.shape[:2]
    scale = min(1.0, display_size / max(h, w))
    size_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    import cv2

    image = cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA) if scale < 1 else image
    amap = cv2.resize(picture.anomaly_map.astype(np.float32), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
    low, high, source = value_range
    panels = ["image"] + (["ground truth"] if with_truth else []) + ["anomaly map", "predicted mask"]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 0.6, 3.6), dpi=80,
                                constrained_layout=True)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0].imshow(image)
    axes[0].set_title(f"{picture.category} / {picture.defect}", fontsize=9)
    column = 1
    if with_truth:
        truth = np.zeros(size_hw, np.uint8)
        if picture.mask_paths:
            try:
                truth = read_ground_truth(picture.mask_paths, size_hw=size_hw)[0]
            except DataError:
                pass
        axes[column].imshow(image)
        axes[column].imshow(np.ma.masked_where(truth == 0, truth), cmap="autumn", alpha=0.55, vmin=0, vmax=1)
        axes[column].set_title("ground truth" if truth.any() else "ground truth: normal", fontsize=9)
        column += 1
    shown = axes[column].imshow(amap, cmap=COLORMAP, vmin=low, vmax=high)
    axes[column].set_title("anomaly map", fontsize=9)
    bar = figure.colorbar(shown, ax=axes[column], fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(f"raw score; range from {source}", fontsize=6)
    if thresholds is not None and thresholds.pixel is not None:
        bar.ax.axhline(thresholds.pixel, color="cyan", linewidth=2)
        bar.ax.text(1.6, thresholds.pixel, "threshold", transform=bar.ax.get_yaxis_transform(), fontsize=6,
                    color="black", va="center")
    column += 1
    if thresholds is not None and thresholds.pixel is not None:
        predicted = amap >= thresholds.pixel
        axes[column].imshow(image)
        axes[column].imshow(np.ma.masked_where(~predicted, predicted.astype(np.uint8)), cmap="cool", alpha=0.6,
                            vmin=0, vmax=1)
        axes[column].set_title(f"predicted mask ({predicted.mean():.0%} of pixels)", fontsize=9)
    else:
        axes[column].imshow(np.zeros(size_hw), cmap="gray", vmin=0, vmax=1)
        axes[column].set_title("predicted mask: no pixel threshold", fontsize=9)
    figure.suptitle(verdict(picture.score, thresholds), fontsize=10,
                    color="darkred" if thresholds is not None and thresholds.image is not None
                    and picture.score >= thresholds.image else "black")
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    plt.close(figure)
    return rgba[:, :, :3].copy()


def _save_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the heat map {path}")
    atomic_write_bytes(path, encoded.tobytes(), fsync=False)


class Visualizer(Callback):
    """Heat-map pictures into ``<run_dir>/heatmaps/<test|predict>/<category>/`` and, after test,
    the gallery (``<run_dir>/gallery/``) the HTML report reads.

    Args:
        enabled: the switch (``Visualizer(enabled=False)`` under ``trainer.callbacks`` turns the
            default one off).
        per_class: test pictures per category: this many normal images and this many of every
            defect type, chosen by a seeded hash of the image (the same images for every method).
        selection_seed: seed of that choice; keep it fixed across a grid so methods are comparable.
        max_predict: most pictures written by ``predict`` (None = one per image).
        display_size: long side of each panel's image in pixels.
        log_images: also send the test pictures to loggers that take images (W&B).
        write_gallery: write the gallery files (maps of the chosen images) for ``anomaly-bench report``.
    """

    def __init__(self, enabled: bool = True, per_class: int = 2, selection_seed: int = 0,
                 max_predict: int | None = None, display_size: int = 256, log_images: bool = True,
                 write_gallery: bool = True) -> None:
        self.enabled = enabled
        self.per_class = int(per_class)
        self.selection_seed = int(selection_seed)
        self.max_predict = max_predict
        self.display_size = int(display_size)
        self.log_images = log_images
        self.write_gallery = write_gallery
        self._gallery: GalleryCollector | None = None
        self._predicted: list[Picture] = []

    # ------------------------------------------------------------------------------ test
    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._gallery = GalleryCollector(per_class=self.per_class, seed=self.selection_seed,
                                         max_side=self.display_size)
        if self.enabled:
            clear_stage_outputs(trainer, "heatmaps/test")  # an earlier test's pictures

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not self.enabled or not isinstance(outputs, AnomalyOutput) or not isinstance(batch, Batch):
            return
        if self._gallery is None:
            self.on_test_epoch_start(trainer, pl_module)
        maps = outputs.anomaly_map.detach().float().cpu().numpy()
        scores = outputs.pred_score.detach().float().cpu().tolist()
        for i, path in enumerate(batch.path):
            self._gallery.offer(path, batch.category[i], batch.defect[i], int(batch.label[i]), scores[i], maps[i],
                                batch.mask_paths[i] if batch.mask_paths else ())

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        gallery, self._gallery = self._gallery, None
        if not self.enabled or gallery is None:
            return
        gallery = _gathered(gallery)
        if not trainer.is_global_zero:
            return
        run_dir = run_dir_of(trainer)
        if self.write_gallery:
            gallery.write(run_dir)
        logged: dict[str, list[np.ndarray]] = {}
        for category in gallery.categories():
            chosen = thresholds_for(getattr(pl_module, "thresholds", None), category)
            value_range = display_range(chosen, gallery.display_range(category))
            for entry in gallery.selected(category):
                picture = _picture(entry)
                rgb = render(picture, chosen, value_range, self.display_size, with_truth=True)
                _save_png(run_dir / "heatmaps" / "test" / safe_name(category) / _file_name(picture), rgb)
                logged.setdefault(category, []).append(rgb)
        if self.log_images:
            _log_to_loggers(trainer, logged, "test")

    # --------------------------------------------------------------------------- predict
    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._predicted = []
        if self.enabled:
            clear_stage_outputs(trainer, "heatmaps/predict")  # an earlier predict's pictures

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if not self.enabled or not isinstance(outputs, AnomalyOutput):
            return
        maps = outputs.anomaly_map.detach().float()
        h, w = maps.shape[-2:]
        scale = min(1.0, self.display_size / max(h, w))
        if scale < 1.0:
            maps = F.interpolate(maps[:, None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                 mode="bilinear", align_corners=False)[:, 0]
        scores = outputs.pred_score.detach().float().cpu().tolist()
        for i, path in enumerate(batch.path):
            if self.max_predict is not None and len(self._predicted) >= self.max_predict:
                return
            self._predicted.append(Picture(path, batch.category[i], batch.defect[i], int(batch.label[i]), scores[i],
                                           maps[i].cpu().numpy()))

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pictures, self._predicted = self._predicted, []
        if not self.enabled or not pictures:
            return
        run_dir = run_dir_of(trainer)
        by_category: dict[str, list[Picture]] = {}
        for picture in pictures:
            by_category.setdefault(picture.category, []).append(picture)
        for category, items in by_category.items():
            chosen = thresholds_for(getattr(pl_module, "thresholds", None), category)
            fallback = (min(float(p.anomaly_map.min()) for p in items),
                        float(np.percentile([p.anomaly_map.max() for p in items], 99)))
            value_range = display_range(chosen, fallback)
            for picture in items:
                rgb = render(picture, chosen, value_range, self.display_size, with_truth=False)
                _save_png(run_dir / "heatmaps" / "predict" / safe_name(category) / _file_name(picture), rgb)


def _picture(entry: GalleryEntry) -> Picture:
    candidate = entry.candidate
    return Picture(candidate.path, candidate.category, candidate.defect, candidate.label, entry.score,
                   np.asarray(entry.anomaly_map, dtype=np.float32), tuple(entry.mask_paths))


def _file_name(picture: Picture) -> str:
    return image_file_name(picture.defect, picture.path, picture.label)


def _gathered(gallery: GalleryCollector) -> GalleryCollector:
    """Every rank's candidates in one collector (DDP: each rank tested a share of the images)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return gallery
    parts: list[GalleryCollector | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, gallery)
    merged = parts[0] or gallery
    for other in parts[1:]:
        if other is not None:
            merged.merge(other)
    return merged


def _log_to_loggers(trainer: Any, images: dict[str, list[np.ndarray]], stage: str) -> None:
    for logger in trainer.loggers:
        log_image = getattr(logger, "log_image", None)
        if log_image is None:
            continue
        for category, pictures in images.items():
            try:
                log_image(key=f"{stage}/heatmaps/{category}", images=pictures[:16])
            except Exception as err:  # a logger must never fail a run
                print(f"[anomaly_bench] could not log heat maps to {type(logger).__name__}: {err}")
