"""Ground truth of one image at the evaluation resolution, stored sparsely.

Anomalous pixels are ~0.1-3 % of a test set, so a ground truth is kept as the flat indices of its
positive pixels plus PRO weights (1/area of the 8-connected region each pixel belongs to) and, for
MVTec LOCO, one index list and one saturation per mask file ("channel"). Connected components
are computed once per mask and cached (:class:`GroundTruthCache`), never per epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from anomaly_bench.types import DefectSpec

CONNECTIVITY = 8


@dataclass(frozen=True)
class GroundTruth:
    """Sparse ground truth of one image of ``height x width`` pixels."""

    height: int
    width: int
    positive_index: Tensor  # int64 [P], flat indices of gt != 0 (union of channels)
    region_weight: Tensor  # float64 [P], 1 / area of the pixel's connected region
    num_regions: int
    channel_index: tuple[Tensor, ...] = field(default_factory=tuple)  # int64 per channel
    channel_saturation: tuple[float, ...] = field(default_factory=tuple)

    @property
    def num_pixels(self) -> int:
        return self.height * self.width

    @staticmethod
    def normal(height: int, width: int) -> "GroundTruth":
        """An all-normal image: no positives, no regions."""
        empty = torch.empty(0, dtype=torch.int64)
        return GroundTruth(height, width, empty, torch.empty(0, dtype=torch.float64), 0)


def _as_numpy_mask(mask: np.ndarray | Tensor, what: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [H, W] mask, got shape {array.shape}")
    return array != 0


def regions_of(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """8-connected regions of a binary mask: (flat positive indices, 1/area per index, #regions)."""
    if not binary.any():  # normal images: nothing to label
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64), 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S
    )
    flat = labels.reshape(-1)
    positive = np.flatnonzero(flat)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    weights = (1.0 / areas[flat[positive]]).astype(np.float64)
    return positive.astype(np.int64), weights, int(count - 1)


def saturation_area(spec: DefectSpec, area: int, area_scale: float = 1.0) -> float:
    """Pixels of a channel that must be flagged for sPRO 1 (MVTec LOCO v2.0 rule).

    relative: ``int(threshold * area)`` (truncated, as the official code); absolute:
    ``min(threshold, area)``, with the threshold scaled by ``area_scale`` (evaluation pixels per
    native pixel) when the evaluation is not at native resolution. At least 1 pixel: the official
    relative rule can truncate tiny regions to 0 and then divides by zero.
    """
    if spec.relative_saturation:
        value = float(int(spec.saturation_threshold * area))
    else:
        value = min(float(spec.saturation_threshold) * area_scale, float(area))
    return max(1.0, value)


def ground_truth_from_mask(
    mask: np.ndarray | Tensor,
    channels: Sequence[np.ndarray | Tensor] = (),
    defects: Sequence[DefectSpec] = (),
    area_scale: float = 1.0,
) -> GroundTruth:
    """Build a :class:`GroundTruth` from a union mask (any values, binarised ``!= 0``) and, for
    sPRO, the channel masks with their :class:`DefectSpec` (default: relative saturation 1.0,
    i.e. plain per-channel overlap)."""
    binary = _as_numpy_mask(mask, "ground-truth mask")
    height, width = binary.shape
    index, weights, num_regions = regions_of(binary)
    channel_index: list[Tensor] = []
    saturations: list[float] = []
    for number, channel in enumerate(channels):
        spec = defects[number] if number < len(defects) else DefectSpec()
        channel_binary = _as_numpy_mask(channel, f"ground-truth channel {number}")
        if channel_binary.shape != binary.shape:
            raise ValueError(f"channel {number} has shape {channel_binary.shape}, union mask {binary.shape}")
        flat = np.flatnonzero(channel_binary.reshape(-1)).astype(np.int64)
        if len(flat) == 0:
            continue  # e.g. a tiny defect lost by resizing: it has no pixels to score
        channel_index.append(torch.from_numpy(flat))
        saturations.append(saturation_area(spec, len(flat), area_scale))
    return GroundTruth(
        height, width, torch.from_numpy(index), torch.from_numpy(weights), num_regions,
        tuple(channel_index), tuple(saturations),
    )


class GroundTruthCache:
    """Ground truths keyed by (mask files, evaluation size): decoded and labelled once per run."""

    def __init__(self) -> None:
        self._items: dict[tuple, GroundTruth] = {}

    def __len__(self) -> int:
        return len(self._items)

    def from_files(
        self,
        mask_paths: Sequence[str],
        defects: Sequence[DefectSpec] = (),
        size: tuple[int, int] | None = None,
        with_channels: bool = False,
        native_hw: tuple[int, int] | None = None,
        defect_lookup: Mapping[int, DefectSpec] | None = None,
        category: str = "",
    ) -> GroundTruth:
        """Read an image's mask file(s) with the data layer's reader (``io.read_mask_files``: the
        same checks as the datasets) and build its sparse ground truth, cached.

        Args:
            mask_paths: the image's mask files; their union (any non-zero) is the ground truth.
            defects: one ``DefectSpec`` per file (sPRO saturation); each file must hold its
                ``pixel_value``.
            size: evaluation (H, W); None = native resolution.
            with_channels: every file is one sPRO channel holding a single value (MVTec LOCO).
            native_hw: the image's (H, W) on disk; every file must have it (None: not checked).
            defect_lookup: LOCO ``defects_config.json`` entries by pixel value, used when
                ``defects`` is empty to find each file's spec from its value.
            category: the image's category, named in errors.
        """
        key = (tuple(mask_paths), size, with_channels)
        cached = self._items.get(key)
        if cached is not None:
            return cached
        from anomaly_bench.data import io

        expected = [spec.pixel_value for spec in defects] if with_channels and defects else None
        raw, values = io.read_mask_files(mask_paths, native_hw, single_value_per_file=with_channels,
                                         expected_values=expected)
        if with_channels and not defects and defect_lookup is not None:
            from anomaly_bench.data.dataset import defect_specs

            defects = defect_specs(category, mask_paths, values, defect_lookup)
        native = raw[0].shape
        target = tuple(size) if size is not None else native
        resized = [io.resize_mask(mask, target) for mask in raw]
        union = np.logical_or.reduce(resized)
        scale = (target[0] * target[1]) / float(native[0] * native[1])
        truth = ground_truth_from_mask(union, resized if with_channels else (), defects, scale)
        if with_channels and len(truth.channel_index) < len(resized):
            warnings.warn(
                f"{len(resized) - len(truth.channel_index)} ground-truth channel(s) of {Path(mask_paths[0]).parent} "
                f"vanished at evaluation size {target}; they are left out of sPRO",
                stacklevel=2,
            )
        self._items[key] = truth
        return truth

    def from_array(self, key: str, mask: np.ndarray | Tensor, size: tuple[int, int] | None = None) -> GroundTruth:
        """Ground truth from an in-memory mask (e.g. ``batch.mask``), cached under ``key``."""
        binary = _as_numpy_mask(mask, f"mask of {key}")
        target = tuple(size) if size is not None else binary.shape
        cache_key = ("array", key, target)
        cached = self._items.get(cache_key)
        if cached is not None:
            return cached
        from anomaly_bench.data.io import resize_mask

        truth = ground_truth_from_mask(resize_mask(binary, target))
        self._items[cache_key] = truth
        return truth
