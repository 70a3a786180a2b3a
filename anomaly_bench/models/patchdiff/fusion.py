"""Fusing several detectors' maps: the rules, and each map's statistics on the training normals.

The paper does not say how the three LOCO detectors are combined; these rules are our choice
(README). Each detector d gives a map placed on its own s_d x s_d input grid. Its statistics on
the category's training normals are

- per location: mean and std of the placed map at every pixel of that grid (``pixel_stats``,
  [2, s_d, s_d]), for ``pixel_deviation_sum`` (|z|) and ``pixel_standardized_sum`` (z);
- global: mean and std of the map resized to the image, mean and std of the image maxima
  (``global_stats``, [4]), for ``standardized_sum``.

Neutral statistics (mean 0, std 1) leave a map unchanged, so an untrained category scores with
raw logits through the same code path (no branch on whether statistics exist).

Why |z|: the detector is a classifier of normal vs generated patches, so its logit measures how far a
patch is from the *generated* images, not from the normal ones. A part in the wrong place, metal where
a hole belongs or a texture sharper than normal is further from the generated images than the normal
content at that location: its logit falls *below* the location's normal range. A signed z-score (or
the raw logit) ranks those pixels as the most normal of the image, and the map points away from the
defect; the absolute z-score flags a deviation from the location's normal logit in either direction.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

MapFusion = Literal["pixel_deviation_sum", "pixel_standardized_sum", "standardized_sum", "sum"]
MAP_FUSIONS: tuple[str, ...] = ("pixel_deviation_sum", "pixel_standardized_sum", "standardized_sum", "sum")
# rules that z-score every location with its own training-normal statistics
PIXEL_FUSIONS: tuple[str, ...] = ("pixel_deviation_sum", "pixel_standardized_sum")
ImageScore = Literal["max_of_map", "sum_of_max"]
IMAGE_SCORES: tuple[str, ...] = ("max_of_map", "sum_of_max")

# a location whose training-normal logits never vary is not allowed an infinite z-score
PIXEL_STD_FLOOR = 1e-3
# the same guard for the global statistics (one std per detector, far from 0 in practice)
GLOBAL_STD_FLOOR = 1e-6


def neutral_pixel_stats(size: int) -> Tensor:
    """[2, s, s]: mean 0 and std 1 at every location (standardising leaves the map unchanged)."""
    return torch.stack([torch.zeros(size, size), torch.ones(size, size)])


def neutral_global_stats(count: int) -> Tensor:
    """[count, 4]: (map mean, map std, max mean, max std) = (0, 1, 0, 1) per detector."""
    return torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(count, 1)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """A one-line error naming the option when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"model.{name} must be one of {choices}, got {value!r}")


class MapStatistics:
    """Running sums over chunks of normal images of one detector's maps, in float64.

    Args:
        size: side of the detector's input grid (the placed map is size x size).
        device: where the sums live (the maps' device).
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.local_sum = torch.zeros(size, size, dtype=torch.float64, device=device)
        self.local_sq = torch.zeros_like(self.local_sum)
        self.count = 0
        self.image_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.image_sq = torch.zeros_like(self.image_sum)
        self.image_pixels = 0
        self.maxima: list[Tensor] = []

    def update(self, placed: Tensor, on_image: Tensor, peak: Tensor) -> None:
        """Add a chunk: placed maps [B, s, s], the same maps resized to the image [B, H, W], maxima [B]."""
        self.local_sum += placed.double().sum(0)
        self.local_sq += (placed.double() ** 2).sum(0)
        self.count += placed.shape[0]
        self.image_sum += on_image.double().sum()
        self.image_sq += (on_image.double() ** 2).sum()
        self.image_pixels += on_image.numel()
        self.maxima.append(peak)

    def pixel_stats(self) -> Tensor:
        """[2, s, s] per-location mean and unbiased std over images (std 1 with a single image)."""
        n = self.count
        mean = self.local_sum / n
        var = (self.local_sq - n * mean ** 2) / (n - 1) if n > 1 else torch.ones_like(mean)
        return torch.stack([mean, var.clamp_min(0).sqrt()]).float()

    def global_stats(self) -> Tensor:
        """[4]: mean and population std of every pixel of the resized maps, mean and unbiased std of the maxima."""
        mean = self.image_sum / self.image_pixels
        std = (self.image_sq / self.image_pixels - mean ** 2).clamp_min(0).sqrt()
        maxima = torch.cat(self.maxima).double()
        max_std = maxima.std() if maxima.numel() > 1 else maxima.new_tensor(1.0)
        return torch.stack([mean, std, maxima.mean(), max_std]).float()


def standardize_pixels(placed: Tensor, pixel_stats: Tensor) -> Tensor:
    """Z-score every location of placed maps [B, s, s] with that location's (mean, std) [2, s, s]."""
    mean, std = pixel_stats.to(placed.dtype)
    return (placed - mean) / std.clamp_min(PIXEL_STD_FLOOR)


def standardize_global(on_image: Tensor, peak: Tensor, global_stats: Tensor) -> tuple[Tensor, Tensor]:
    """Z-score a detector's map with one (mean, std) and its maxima with another ([4] statistics)."""
    map_mean, map_std, max_mean, max_std = global_stats
    return (on_image - map_mean) / map_std.clamp_min(GLOBAL_STD_FLOOR), (peak - max_mean) / max_std.clamp_min(
        GLOBAL_STD_FLOOR)
