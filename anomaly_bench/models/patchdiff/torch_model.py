"""PatchDiff GRAD as plain nn.Modules that own inference: images -> AnomalyOutput (no Lightning).

``PatchDiffGRADModel`` holds one ``PatchDiffCategoryModel`` per category (the paper trains one
GRAD per category) and sends each image to its category's detectors. One category scores an image
batch [B, 3, H, W] in [-1, 1] with every detector d (input size s_d) as

    x_d      = resize(images, s_d) (+) coordinate map            [B, 5, s_d, s_d]
    logits_d = detector_d(x_d)                                   one cell per 34 x 34 window, stride 4
    placed_d = patch_map_to_image(logits_d)                      each cell over its window's centre
    z_d      = |placed_d - mean_d| / std_d per location (fusion.py; or signed, or none)
    map      = blur(sum_d resize(z_d, H x W)),  score = max of the fused map (or sum of maxima)

One detector (the paper's MVTec AD setting) with ``map_fusion`` other than ``pixel_deviation_sum`` is
the paper's rule: the map is its placed logit map, the score its maximum logit. The generators
(PatchDiff per level) and DAE heads are trained parts kept here so that a checkpoint holds everything;
inference does not use them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.patchdiff import fusion
from anomaly_bench.models.patchdiff.detector import (
    PATCH_SIZE,
    DAEHead,
    PatchDetector,
    gaussian_blur,
    patch_map_to_image,
)
from anomaly_bench.models.patchdiff.fusion import IMAGE_SCORES, MAP_FUSIONS, ImageScore, MapFusion
from anomaly_bench.models.patchdiff.generator import PatchDiff, coordinate_map
from anomaly_bench.types import AnomalyOutput

# input size of the paper's level-34 detector; other sizes are named by their effective window
PAPER_INPUT_SIZE = 256
# images per detector pass while computing the statistics: the full-width detector keeps about
# 50 MB of activations per 256 px image, so 16 images stay under 1 GB; the result does not depend on it
STATISTICS_CHUNK = 16


@dataclass
class DetectorSpec:
    """One patch-level detector: the size images are resized to and the PatchDiff levels it learns from.

    Paper Table 7: level-34 = 256 px with levels (5, 9, 13); level-68 = 128 px with (5, 9, 13);
    level-136 = 64 px with (9, 13, 17).
    """

    input_size: int = PAPER_INPUT_SIZE
    levels: list[int] = field(default_factory=lambda: [5, 9, 13])
    name: str = ""

    def __post_init__(self) -> None:
        if self.input_size < PATCH_SIZE:
            raise ValueError(f"detector input_size must be >= {PATCH_SIZE} (the patch size), got {self.input_size}")
        if not self.levels:
            raise ValueError(f"detector {self.name or self.input_size}: 'levels' must list at least one "
                             "PatchDiff level")
        self.levels = [int(level) for level in self.levels]
        if not self.name:
            self.name = (f"level{PATCH_SIZE * PAPER_INPUT_SIZE // self.input_size}"
                         if PAPER_INPUT_SIZE % self.input_size == 0 else f"size{self.input_size}")

    @classmethod
    def parse(cls, value: DetectorSpec | Mapping[str, Any], where: str) -> DetectorSpec:
        if isinstance(value, DetectorSpec):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{where}: expected a mapping with input_size/levels/name, got {value!r}")
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


def parse_detectors(detectors: Sequence[DetectorSpec | Mapping[str, Any]] | None) -> list[DetectorSpec]:
    """The ``detectors`` option as specs; None = the paper's MVTec AD setting (one level-34 detector)."""
    if detectors is None:
        return [DetectorSpec(s.input_size, list(s.levels), s.name) for s in PAPER_DETECTORS_MVTEC]
    specs = [DetectorSpec.parse(s, f"model.detectors[{i}]") for i, s in enumerate(detectors)]
    if not specs:
        raise ValueError("model.detectors must list at least one detector (null = the paper's MVTec AD setting)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model.detectors: names must differ (they name the optimisers and logs), got {names}")
    return specs


def resize(images: Tensor, size: int) -> Tensor:
    """Square resize with anti-aliasing (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def to_image_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, s, s] maps on a detector's input grid -> [B, H, W] on the image's (bilinear)."""
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class PatchDiffCategoryModel(nn.Module):
    """One category's PatchDiff GRAD: a PatchDiff per level, the detectors with their DAE heads, and
    the statistics of each detector's map on the category's training normals.

    Args:
        detectors: list of ``{input_size, levels, name}``, one per patch detector; null = the paper's
            MVTec AD setting (one level-34 detector at 256 px trained on PatchDiff levels 5, 9, 13).
            MVTec LOCO (paper Table 7): 256 px with (5, 9, 13), 128 px with (5, 9, 13), 64 px with (9, 13, 17).
        detector_width: multiplies every hidden width of the Table 8 detector; 1.0 is the paper's
            network (2.92 M parameters), smaller values exist for CPU tests and demos only.
        generator_channels: width of every layer of the PatchDiff denoisers (the paper does not say).
        generator_coord_frequencies: octaves of a sin/cos encoding of the coordinate map inside the
            denoiser; 0 feeds the paper's raw 2-channel (x, y) map. Encoded coordinates let a small
            generator learn where parts go (README: layout error 42.0 -> 8.9 on synthetic pins), and
            with it absolute position, which the paper's "disregard the global structure" does not want.
        blur_sigma: standard deviation in pixels of the Gaussian blur of the returned anomaly map (the
            paper's "kernel size of 16" read as sigma 4 at 256 px); 0 switches the blur off.
        map_fusion: how the detectors' maps become one map: ``pixel_deviation_sum`` sums, per location,
            |logit - mean| / std with that location's training-normal statistics (a deviation either
            way; also with one detector); ``pixel_standardized_sum`` sums the signed z-scores,
            ``standardized_sum`` uses one mean/std per detector, ``sum`` adds raw logits. With one
            detector the last three give the paper's rule: its raw logit map and maximum logit.
        image_score: rule from the detectors' maps to the image score: ``max_of_map`` = maximum of the
            fused map, ``sum_of_max`` = sum of the per-detector maxima (the same with one detector).
            With the paper's single-detector rule: its maximum logit.
        **generator_options: the diffusion options of every ``PatchDiff`` (``num_train_timesteps``,
            ``beta_schedule``, ``beta_start``, ``beta_end``, ``global_noise_std``, ``clip_sample``).
    """

    def __init__(
        self,
        detectors: list[dict[str, Any]] | None = None,
        detector_width: float = 1.0,
        generator_channels: int = 64,
        generator_coord_frequencies: int = 0,
        blur_sigma: float = 4.0,
        map_fusion: MapFusion = "pixel_deviation_sum",
        image_score: ImageScore = "max_of_map",
        **generator_options: Any,
    ) -> None:
        super().__init__()
        self.check_options(dict(detectors=detectors, generator_coord_frequencies=generator_coord_frequencies,
                                map_fusion=map_fusion, image_score=image_score, **generator_options))
        self.specs = parse_detectors(detectors)
        self.blur_sigma, self.map_fusion, self.image_score = float(blur_sigma), map_fusion, image_score
        levels = sorted({level for spec in self.specs for level in spec.levels})
        self.generators = nn.ModuleDict({
            str(level): PatchDiff(level, generator_channels, coord_frequencies=generator_coord_frequencies,
                                  **generator_options)
            for level in levels})
        self.detectors = nn.ModuleList(PatchDetector(width=detector_width) for _ in self.specs)
        feature_dim = self.detectors[0].feature_dim
        self.dae_heads = nn.ModuleList(DAEHead(feature_dim, hidden=feature_dim) for _ in self.specs)
        # (map mean, map std, max mean, max std) per detector, and [2, s, s] per-location mean / std:
        # neutral until ``compute_fusion_stats`` fills them at the end of training
        self.register_buffer("fusion_stats", fusion.neutral_global_stats(len(self.specs)))
        for d, spec in enumerate(self.specs):
            self.register_buffer(f"pixel_stats_{d}", fusion.neutral_pixel_stats(spec.input_size))
        self.register_buffer("fusion_ready", torch.zeros((), dtype=torch.bool))

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise the error construction would raise for ``options``, without building a network."""
        bound = inspect.signature(cls).bind_partial(**options)
        bound.apply_defaults()
        values = bound.arguments
        parse_detectors(values["detectors"])
        fusion.check_choice("map_fusion", values["map_fusion"], MAP_FUSIONS)
        fusion.check_choice("image_score", values["image_score"], IMAGE_SCORES)
        if int(values["generator_channels"]) < 1:
            raise ValueError(f"model.generator_channels must be >= 1, got {values['generator_channels']}")
        timesteps = values["generator_options"].get("num_train_timesteps", 1)
        if int(timesteps) < 1:
            raise ValueError(f"model.num_train_timesteps must be >= 1, got {timesteps}")
        frequencies = values["generator_coord_frequencies"]
        if int(frequencies) < 0:
            raise ValueError(f"model.generator_coord_frequencies must be >= 0, got {frequencies}")
        # level, width and coordinate encoding are set here; the rest of PatchDiff's options pass through
        passed_on = set(inspect.signature(PatchDiff).parameters) - {"level", "channels", "coord_frequencies"}
        unknown = set(values["generator_options"]) - passed_on
        if unknown:
            raise TypeError(f"unknown PatchDiff GRAD model options {sorted(unknown)}")

    @property
    def levels(self) -> list[int]:
        return [int(k) for k in self.generators]

    def pixel_stats(self, d: int) -> Tensor:
        """[2, s, s] per-location mean and std of detector d's placed map on training normals."""
        return getattr(self, f"pixel_stats_{d}")

    def detector_input(self, images: Tensor, spec: DetectorSpec) -> Tensor:
        """Images [B,3,H,W] in [-1,1] -> detector input [B,5,s,s] (resized RGB + coordinates)."""
        x = resize(images, spec.input_size)
        coords = coordinate_map(spec.input_size, spec.input_size, x.device, x.dtype)
        return torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1)

    def placed_maps(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per detector: (logit map placed on its s x s input grid [B,s,s], max logit [B])."""
        out = []
        for spec, detector in zip(self.specs, self.detectors):
            logits = detector(self.detector_input(images, spec))
            out.append((patch_map_to_image(logits, (spec.input_size, spec.input_size)), logits.flatten(1).amax(dim=1)))
        return out

    def forward(self, images: Tensor) -> AnomalyOutput:
        """Anomaly map [B, H, W] and image score [B] of images [B, 3, H, W] in [-1, 1]; raw logits."""
        return self.score(images)

    def score(self, images: Tensor, blur_sigma: float | None = None, map_fusion: MapFusion | None = None,
              image_score: ImageScore | None = None) -> AnomalyOutput:
        """``forward`` with scoring options other than the model's (e.g. several fusion rules on the same
        trained detectors); None keeps the model's own."""
        blur_sigma = self.blur_sigma if blur_sigma is None else blur_sigma
        map_fusion = map_fusion or self.map_fusion
        image_score = image_score or self.image_score
        fusion.check_choice("map_fusion", map_fusion, MAP_FUSIONS)
        fusion.check_choice("image_score", image_score, IMAGE_SCORES)
        size = (images.shape[-2], images.shape[-1])
        if len(self.specs) == 1 and map_fusion != "pixel_deviation_sum":  # the paper's rule
            placed, peak = self.placed_maps(images)[0]
            return AnomalyOutput(gaussian_blur(to_image_grid(placed, size), blur_sigma), peak)
        fused_map, summed_peaks = None, None
        for d, (placed, peak) in enumerate(self.placed_maps(images)):
            if map_fusion in fusion.PIXEL_FUSIONS:
                placed = fusion.standardize_pixels(placed, self.pixel_stats(d))
                if map_fusion == "pixel_deviation_sum":  # |z|: a deviation either way (fusion.py)
                    placed = torch.where(self.fusion_ready, placed.abs(), placed)
                # before the statistics exist the maximum stays the raw logits' (a tensor select, no branch)
                peak = torch.where(self.fusion_ready, placed.flatten(1).amax(dim=1), peak)
            on_image = to_image_grid(placed, size)
            if map_fusion == "standardized_sum":
                on_image, peak = fusion.standardize_global(on_image, peak, self.fusion_stats[d])
            fused_map = on_image if fused_map is None else fused_map + on_image
            summed_peaks = peak if summed_peaks is None else summed_peaks + peak
        score = fused_map.flatten(1).amax(dim=1) if image_score == "max_of_map" else summed_peaks
        return AnomalyOutput(gaussian_blur(fused_map, blur_sigma), score)

    @torch.no_grad()
    def compute_fusion_stats(self, images: Tensor, chunk: int = STATISTICS_CHUNK) -> None:
        """Fill ``fusion_stats`` and ``pixel_stats_<d>`` from normal images [N,3,H,W] in [-1,1].

        ``chunk`` images go through the detectors at a time; it bounds memory, not the result.
        """
        size = (images.shape[-2], images.shape[-1])
        stats = [fusion.MapStatistics(spec.input_size, images.device) for spec in self.specs]
        for start in range(0, images.shape[0], chunk):
            for d, (placed, peak) in enumerate(self.placed_maps(images[start:start + chunk])):
                stats[d].update(placed, to_image_grid(placed, size), peak)
        for d, running in enumerate(stats):
            self.fusion_stats[d] = running.global_stats()
            self.pixel_stats(d).copy_(running.pixel_stats())
        self.fusion_ready.fill_(True)


def category_key(category: str) -> str:
    """ModuleDict keys may not contain dots; category names keep their meaning otherwise."""
    return re.sub(r"[^0-9A-Za-z_\-]", "_", category) or "_"


class PatchDiffGRADModel(nn.Module):
    """PatchDiff GRAD over one or several categories: a ``PatchDiffCategoryModel`` per category.

    ``model(images, categories)`` -> ``AnomalyOutput``: each image is scored by its category's
    detectors; a single-category model accepts ``categories=None``. Categories are usually known
    only once the data is set up: ``add_categories`` builds them later, and loading a state dict
    into a model without categories builds the saved ones first (``get_extra_state``).

    Args:
        categories: category names to build models for now; null = later, from the datamodule's
            categories (``PatchDiffGRAD.setup``) or from a checkpoint.
        **category_options: the options of every ``PatchDiffCategoryModel`` (detectors, generator
            architecture and diffusion schedule, scoring).
    """

    def __init__(self, categories: Sequence[str] | None = None, **category_options: Any) -> None:
        super().__init__()
        PatchDiffCategoryModel.check_options(category_options)
        self.category_options = category_options
        self.category_models = nn.ModuleDict()
        self.categories: list[str] = []
        # follows the module across devices and dtypes, so categories added later land where the model is
        self.register_buffer("device_anchor", torch.zeros(0), persistent=False)
        if categories:
            self.add_categories(categories)

    def add_categories(self, categories: Sequence[str]) -> None:
        """Build a fresh model for every name not built yet (sorted by name)."""
        names = sorted(set(categories) - set(self.categories))
        everything = sorted(set(self.categories) | set(names))
        keys = [category_key(c) for c in everything]
        if len(set(keys)) != len(keys):
            raise ValueError(f"category names {everything} collide after sanitising to module keys {keys}")
        for name in names:
            self.category_models[category_key(name)] = PatchDiffCategoryModel(**self.category_options).to(
                self.device_anchor.device, self.device_anchor.dtype)
        self.categories = everything

    def category(self, name: str) -> PatchDiffCategoryModel:
        """The model of category ``name``."""
        key = category_key(name)
        if name not in self.categories or key not in self.category_models:
            raise KeyError(f"PatchDiffGRAD has no model for category {name!r}; trained: {self.categories}")
        return self.category_models[key]

    def get_extra_state(self) -> dict[str, Any]:
        return {"categories": list(self.categories)}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = sorted(state.get("categories", []))
        if not self.categories:
            self.add_categories(saved)  # runs before the children load, so their weights find a home
        elif saved != self.categories:
            raise ValueError(f"checkpoint was trained on categories {saved}, this model has {self.categories}")

    def forward(self, images: Tensor, categories: Sequence[str] | None = None) -> AnomalyOutput:
        """Anomaly maps [B, H, W] and scores [B] of images [B, 3, H, W] in [-1, 1].

        ``categories[i]`` names the category of image i; a single-category model scores every image
        with its one category (names are not checked, as a folder of images has none).
        """
        if categories is None or len(self.categories) == 1:
            if len(self.categories) != 1:
                raise ValueError(f"PatchDiffGRADModel needs each image's category: it is not a single-category "
                                 f"model (has {self.categories}); pass categories (score_batch does)")
            return self.category(self.categories[0])(images)
        names = list(categories)
        if len(names) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(names)} category names")
        if len(set(names)) == 1:
            return self.category(names[0])(images)
        maps = images.new_zeros(images.shape[0], *images.shape[-2:])
        scores = images.new_zeros(images.shape[0])
        for name in sorted(set(names)):
            index = torch.tensor([i for i, c in enumerate(names) if c == name], device=images.device)
            output = self.category(name)(images[index])
            maps[index] = output.anomaly_map.to(maps.dtype)
            scores[index] = output.pred_score.to(scores.dtype)
        return AnomalyOutput(maps, scores)
