"""Metrics on plain arrays, no model or trainer needed.

    from anomaly_bench.metrics import functional as F
    F.pixel_auroc(maps, masks)               # maps: [N, H, W] array / tensor, or a list of [H, W]
    F.aupro(maps, masks, fpr_limit=0.3)      # official MVTec AD AU-PRO
    F.auspro(maps, channels, defects)        # official MVTec LOCO AU-sPRO

Masks take any values; ``!= 0`` is anomalous. A map whose size differs from its mask is resized
bilinearly to the mask size. Scores are used raw (no sigmoid, no clamping). ``mode``: ``auto``
(exact up to ``exact_max_pixels``), ``exact`` or ``binned``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.ground_truth import GroundTruth, ground_truth_from_mask
from anomaly_bench.metrics.pixel import BinningConfig, PixelImage, evaluate_pixels
from anomaly_bench.metrics.ranking import EXACT, exact_points
from anomaly_bench.types import DefectSpec

ArrayLike = np.ndarray | Tensor | Sequence


def _as_tensor(value) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value)))


def _as_map_list(maps: ArrayLike, what: str) -> list[Tensor]:
    if isinstance(maps, (np.ndarray, Tensor)):
        tensor = _as_tensor(maps)
        if tensor.ndim == 2:
            return [tensor]
        if tensor.ndim == 3:
            return list(tensor.unbind(0))
        raise ValueError(f"{what} must be [H, W], [N, H, W] or a list of [H, W], got shape {tuple(tensor.shape)}")
    items = [_as_tensor(m) for m in maps]
    for i, item in enumerate(items):
        if item.ndim != 2:
            raise ValueError(f"{what}[{i}] must be [H, W], got shape {tuple(item.shape)}")
    return items


def _to_float_map(item: Tensor) -> Tensor:
    return item if item.is_floating_point() else item.to(torch.float32)


def image_curves(scores: ArrayLike, labels: ArrayLike) -> RankingCurves:
    """Exact image-level curves from scores [N] and labels [N] (1 anomalous, 0 normal)."""
    scores_t = _as_tensor(scores).reshape(-1).to(torch.float32)
    labels_t = _as_tensor(labels).reshape(-1)
    if scores_t.numel() != labels_t.numel():
        raise ValueError(f"scores ({scores_t.numel()}) and labels ({labels_t.numel()}) differ in length")
    return RankingCurves(exact_points(scores_t, scores_t[labels_t != 0]), mode=EXACT)


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    return image_curves(scores, labels).auroc()


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    return image_curves(scores, labels).average_precision()


def pixel_curves(
    maps: ArrayLike,
    masks: ArrayLike | None = None,
    *,
    ground_truths: Sequence[GroundTruth] | None = None,
    mode: str = "auto",
    config: BinningConfig | None = None,
) -> RankingCurves:
    """All pixel curves in one pass (ROC, PR, PRO, and sPRO when ``ground_truths`` carry channels)."""
    map_list = _as_map_list(maps, "maps")
    if ground_truths is None:
        if masks is None:
            raise ValueError("pixel metrics need masks (or ground_truths)")
        mask_list = _as_map_list(masks, "masks")
        if len(mask_list) != len(map_list):
            raise ValueError(f"{len(map_list)} maps but {len(mask_list)} masks")
        ground_truths = [ground_truth_from_mask(m) for m in mask_list]
    if len(ground_truths) != len(map_list):
        raise ValueError(f"{len(map_list)} maps but {len(ground_truths)} ground truths")
    config = config or BinningConfig(mode=mode)
    images = [PixelImage(_to_float_map(m), gt) for m, gt in zip(map_list, ground_truths)]
    return evaluate_pixels(images, None, config)["all"]


def pixel_auroc(maps: ArrayLike, masks: ArrayLike, mode: str = "auto") -> float:
    return pixel_curves(maps, masks, mode=mode).auroc()


def pixel_ap(maps: ArrayLike, masks: ArrayLike, mode: str = "auto") -> float:
    return pixel_curves(maps, masks, mode=mode).average_precision()


def pixel_f1max_oracle(maps: ArrayLike, masks: ArrayLike, mode: str = "auto") -> float:
    """Best pixel F1 over thresholds picked on the test masks: an ORACLE number."""
    return pixel_curves(maps, masks, mode=mode).f1_max_oracle()[0]


def aupro(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, mode: str = "auto") -> float:
    """AU-PRO (official MVTec AD): 8-connected regions, FPR over all pixels, cut at ``fpr_limit``."""
    return pixel_curves(maps, masks, mode=mode).aupro(fpr_limit)


def spro_ground_truths(
    channels: Sequence[ArrayLike | None],
    defects: Sequence[Sequence[DefectSpec | float] | None] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[GroundTruth]:
    """Ground truths for sPRO: ``channels[i]`` is one image's channel masks (``[C, H, W]`` or a
    list of ``[H, W]``; a single ``[H, W]`` is one channel; ``None`` / empty = normal, then
    ``sizes[i]`` gives its size). ``defects[i][c]``: a ``DefectSpec`` or a float = relative
    saturation; default relative 1.0."""
    truths = []
    for i, image_channels in enumerate(channels):
        if image_channels is None or (not isinstance(image_channels, (np.ndarray, Tensor)) and len(image_channels) == 0):
            if sizes is None:
                raise ValueError(f"image {i} has no channels: pass sizes= so its pixel count is known")
            truths.append(GroundTruth.normal(*sizes[i]))
            continue
        layers = _as_map_list(image_channels, f"channels[{i}]")
        specs_raw = list(defects[i]) if defects is not None and defects[i] is not None else []
        specs = [s if isinstance(s, DefectSpec) else DefectSpec(saturation_threshold=float(s)) for s in specs_raw]
        union = torch.stack([layer != 0 for layer in layers]).any(0)
        truths.append(ground_truth_from_mask(union, layers, specs))
    return truths


def auspro(
    maps: ArrayLike,
    channels: Sequence[ArrayLike | None],
    defects: Sequence[Sequence[DefectSpec | float] | None] | None = None,
    fpr_limit: float = 0.05,
    mode: str = "auto",
) -> float:
    """AU-sPRO (official MVTec LOCO v2.0): every channel (mask file) is one region, however many
    blobs it holds; saturation per ``DefectSpec``; FPR over pixels outside all channels."""
    map_list = _as_map_list(maps, "maps")
    sizes = [tuple(m.shape) for m in map_list]
    truths = spro_ground_truths(channels, defects, sizes)
    return pixel_curves(map_list, ground_truths=truths, mode=mode).auspro(fpr_limit)
