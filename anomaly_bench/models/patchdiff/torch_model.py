"""PatchDiff GRAD for one category: generators, detectors and the scoring path (pure nn.Module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.patchdiff.detector import (
    PATCH_SIZE,
    DAEHead,
    PatchDetector,
    gaussian_blur,
    patch_map_to_image,
)
from anomaly_bench.models.patchdiff.generator import PatchDiff, coordinate_map
from anomaly_bench.models.patchdiff.reweighting import FeatureMemoryBank

FusionName = Literal["pixel_standardized_sum", "standardized_sum", "sum"]
FUSIONS = ("pixel_standardized_sum", "standardized_sum", "sum")
# a location whose training-normal logits never vary is not allowed an infinite z-score
PIXEL_STD_FLOOR = 1e-3
ImageScoreName = Literal["sum_of_max", "max_of_map"]
IMAGE_SCORES = ("sum_of_max", "max_of_map")


@dataclass
class DetectorSpec:
    """One patch-level detector: the size images are resized to and the PatchDiff levels it learns from.

    Paper Table 7: level-34 = 256 px with levels (5, 9, 13); level-68 = 128 px with (5, 9, 13);
    level-136 = 64 px with (9, 13, 17).
    """

    input_size: int = 256
    levels: list[int] = field(default_factory=lambda: [5, 9, 13])
    name: str = ""

    def __post_init__(self) -> None:
        if self.input_size < PATCH_SIZE:
            raise ValueError(f"detector input_size must be >= {PATCH_SIZE} (the patch size), got {self.input_size}")
        if not self.levels:
            raise ValueError(f"detector {self.name or self.input_size}: 'levels' must list at least one PatchDiff level")
        self.levels = [int(level) for level in self.levels]
        if not self.name:
            self.name = f"level{PATCH_SIZE * 256 // self.input_size}" if 256 % self.input_size == 0 \
                else f"size{self.input_size}"

    @classmethod
    def parse(cls, value: "DetectorSpec | dict", where: str) -> "DetectorSpec":
        if isinstance(value, DetectorSpec):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping with input_size/levels/name, got {value!r}")
        unknown = set(value) - {"input_size", "levels", "name"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected input_size, levels, name")
        return cls(**value)


PAPER_DETECTORS_MVTEC = [DetectorSpec(256, [5, 9, 13], "level34")]
PAPER_DETECTORS_LOCO = [
    DetectorSpec(256, [5, 9, 13], "level34"),
    DetectorSpec(128, [5, 9, 13], "level68"),
    DetectorSpec(64, [9, 13, 17], "level136"),
]


def resize(images: Tensor, size: int) -> Tensor:
    """Square resize with anti-aliasing (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _to_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, s, s] maps on a detector's input grid -> [B, H, W] on the image's (bilinear)."""
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class PatchDiffGRADModel(nn.Module):
    """Everything one category needs: a PatchDiff per level, detectors with DAE heads and memory
    banks, and per-detector statistics for fusing several detectors' maps.

    ``fusion_stats[d] = (pixel_mean, pixel_std, image_mean, image_std)`` of detector d's aligned
    logit map / max logit on the category's training images, and ``pixel_stats_<d>`` = [2, s, s]
    per-location mean / std of that map (s = the detector's input size); filled at the end of training.
    """

    def __init__(self, detectors: list[DetectorSpec], generator_channels: int = 64,
                 generator_kwargs: dict | None = None, memory_bank_size: int = 512,
                 detector_width: float = 1.0) -> None:
        super().__init__()
        self.specs = list(detectors)
        levels = sorted({level for spec in self.specs for level in spec.levels})
        self.generators = nn.ModuleDict(
            {str(level): PatchDiff(level, generator_channels, **(generator_kwargs or {})) for level in levels})
        self.detectors = nn.ModuleList(PatchDetector(width=detector_width) for _ in self.specs)
        feature_dim = self.detectors[0].feature_dim
        self.dae_heads = nn.ModuleList(DAEHead(feature_dim, hidden=feature_dim) for _ in self.specs)
        self.positive_banks = nn.ModuleList(FeatureMemoryBank(memory_bank_size, feature_dim) for _ in self.specs)
        self.negative_banks = nn.ModuleList(FeatureMemoryBank(memory_bank_size, feature_dim) for _ in self.specs)
        self.register_buffer("fusion_stats", torch.zeros(len(self.specs), 4))
        for d, spec in enumerate(self.specs):
            self.register_buffer(f"pixel_stats_{d}", torch.stack([torch.zeros(spec.input_size, spec.input_size),
                                                                  torch.ones(spec.input_size, spec.input_size)]))
        self.register_buffer("fusion_ready", torch.zeros((), dtype=torch.bool))

    @property
    def levels(self) -> list[int]:
        return [int(k) for k in self.generators.keys()]

    def detector_input(self, images: Tensor, spec: DetectorSpec) -> Tensor:
        """Images [B,3,H,W] in [-1,1] -> detector input [B,5,s,s] (resized RGB + coordinates)."""
        x = resize(images, spec.input_size)
        coords = coordinate_map(spec.input_size, spec.input_size, x.device, x.dtype)
        return torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1)

    def pixel_stats(self, d: int) -> Tensor:
        """[2, s, s] per-location mean and std of detector d's aligned map on training normals."""
        return getattr(self, f"pixel_stats_{d}")

    def aligned_maps(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per detector: (logit map placed on its s x s input grid [B,s,s], max logit [B])."""
        out = []
        for spec, detector in zip(self.specs, self.detectors):
            logits = detector(self.detector_input(images, spec))
            out.append((patch_map_to_image(logits, (spec.input_size, spec.input_size)), logits.flatten(1).amax(dim=1)))
        return out

    def detector_maps(self, images: Tensor, standardize_pixels: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Per detector: logit map placed on the input's pixel grid [B,H,W] and its max [B].

        ``standardize_pixels``: each location is first z-scored with that detector's per-location
        statistics on the training normals (``pixel_stats``), and the max is taken over those.
        """
        height, width = images.shape[-2:]
        maps, maxima = [], []
        for d, (aligned, peak) in enumerate(self.aligned_maps(images)):
            if standardize_pixels:
                mean, std = self.pixel_stats(d).to(aligned.dtype)
                aligned = (aligned - mean) / std.clamp_min(PIXEL_STD_FLOOR)
                peak = aligned.flatten(1).amax(dim=1)
            maps.append(_to_grid(aligned, (height, width)))
            maxima.append(peak)
        return maps, maxima

    def forward(self, images: Tensor, blur_sigma: float = 4.0, fusion: FusionName = "pixel_standardized_sum",
                image_score: ImageScoreName = "max_of_map") -> tuple[Tensor, Tensor]:
        """(anomaly_map [B,H,W], image score [B]); raw logits, larger = more anomalous.

        One detector: the map is its aligned logit map and the score its max (the paper's rule).
        Several detectors (LOCO), once the training-normal statistics exist:
        ``standardized_sum`` standardises each map and max with one mean/std per detector, then sums;
        ``pixel_standardized_sum`` z-scores every location of each map with its own mean/std (a
        coordinate-aware detector has location-dependent biases, e.g. where parts jitter), then sums;
        ``sum`` sums raw logits. ``image_score``: sum of the per-detector maxima or max of the fused map.
        """
        if len(self.specs) == 1:
            maps, maxima = self.detector_maps(images)
            return gaussian_blur(maps[0], blur_sigma), maxima[0]
        ready = bool(self.fusion_ready)
        maps, maxima = self.detector_maps(images, standardize_pixels=ready and fusion == "pixel_standardized_sum")
        fused_map = torch.zeros_like(maps[0])
        score = torch.zeros_like(maxima[0])
        for d, (m, s) in enumerate(zip(maps, maxima)):
            if ready and fusion == "standardized_sum":
                pm, ps, im, istd = self.fusion_stats[d]
                m, s = (m - pm) / ps.clamp_min(1e-6), (s - im) / istd.clamp_min(1e-6)
            fused_map = fused_map + m
            score = score + s
        if image_score == "max_of_map":
            score = fused_map.flatten(1).amax(dim=1)
        return gaussian_blur(fused_map, blur_sigma), score

    @torch.no_grad()
    def compute_fusion_stats(self, images: Tensor, chunk: int = 16) -> None:
        """Fill ``fusion_stats`` and ``pixel_stats_<d>`` from normal images [N,3,H,W] in [-1,1]."""
        height, width = images.shape[-2:]
        n_det = len(self.specs)
        pixel_sum = torch.zeros(n_det, dtype=torch.float64, device=images.device)
        pixel_sq = torch.zeros_like(pixel_sum)
        pixel_n = 0
        local_sum = [torch.zeros(s.input_size, s.input_size, dtype=torch.float64, device=images.device)
                     for s in self.specs]
        local_sq = [torch.zeros_like(t) for t in local_sum]
        maxima: list[list[Tensor]] = [[] for _ in self.specs]
        for start in range(0, images.shape[0], chunk):
            batch = images[start:start + chunk]
            for d, (aligned, peak) in enumerate(self.aligned_maps(batch)):
                local_sum[d] += aligned.double().sum(0)
                local_sq[d] += (aligned.double() ** 2).sum(0)
                resized = _to_grid(aligned, (height, width))
                pixel_sum[d] += resized.double().sum()
                pixel_sq[d] += (resized.double() ** 2).sum()
                maxima[d].append(peak)
            pixel_n += batch.shape[0] * height * width
        n = images.shape[0]
        pixel_mean = pixel_sum / pixel_n
        pixel_std = (pixel_sq / pixel_n - pixel_mean ** 2).clamp_min(0).sqrt()
        for d in range(n_det):
            image_max = torch.cat(maxima[d]).double()
            image_std = image_max.std() if image_max.numel() > 1 else image_max.new_tensor(1.0)
            self.fusion_stats[d] = torch.stack([pixel_mean[d], pixel_std[d], image_max.mean(), image_std]).float()
            local_mean = local_sum[d] / n
            # unbiased per-location std (n - 1), as for the image maxima above; 1 with a single image
            local_var = (local_sq[d] - n * local_mean ** 2) / (n - 1) if n > 1 else torch.ones_like(local_mean)
            self.pixel_stats(d).copy_(torch.stack([local_mean, local_var.clamp_min(0).sqrt()]).float())
        self.fusion_ready.fill_(True)
