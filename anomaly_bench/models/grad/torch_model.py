"""Bi-grid GRAD as a pure ``nn.Module`` (paper: "GRAD: Bi-Grid Reconstruction for Image Anomaly Detection").

Data flow (shapes for the EfficientNet-B6 default at 256 px, C = 272, h = w = 32)::

    images ─► frozen backbone ─► x [B, C, h, w]
    x ─► one shared coordinate mapper ─► local coords [B, 2, h, w] (jittered in training), global [B, 2]
    normal grids   (local R_l², global R_g²) ─► [global, local] [B, 2C, h, w] ─► BasicBlocks ─► 1x1 ─► f_n
    abnormal grids (same shapes, same coords) ─► [global, local] ─► z-score per image & channel
                                               ─► BasicBlocks ─► 1x1 ─► f_a   (f_a[:, 0] = "similarity" d)
    fused = f_n + w·f_a   (learned w, init -0.2; official)   or  λ·f_n + (1-λ)·f_a  (paper, fixed λ)
    x̂ = S·x + (1-S)·fused  (CRAD refinement)   ─► distance ||x - x̂||₂ per position
    map, score = distance_map_and_score(distance)   (upsample, box blur, box pool, max)

Grid sampling, coordinate nets, jitter, blocks, refinement and the feature extractor are the shared
components CRAD uses (``anomaly_bench.models.components``); this module only wires them up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from anomaly_bench.models.components.blocks import fusion_network
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.models.components.grid import (
    CoordinateJitter,
    GlobalCoordinateNet,
    GlobalGrid,
    LocalCoordinateNet,
    LocalGrid,
)
from anomaly_bench.models.components.refinement import (
    DistanceImageScore,
    distance_map_and_score,
    feature_distance,
    refine_features,
)
from anomaly_bench.types import AnomalyOutput, as_height_width

FUSION_MODES = ("learned", "convex")
FusionMode = Literal["learned", "convex"]


class SharedCoordinateMapper(nn.Module):
    """Features -> (local coords [B, D, h, w], global coords [B, D]); one mapper serves both grid pairs."""

    def __init__(
        self, channels: int, jitter_std: float = 0.05, jitter_p: float = 0.5, jitter_mode: str = "iteration"
    ) -> None:
        super().__init__()
        self.local_net = LocalCoordinateNet(channels, 2)
        self.global_net = GlobalCoordinateNet(channels, 2)
        self.jitter = CoordinateJitter(jitter_std, jitter_p, jitter_mode)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.jitter(self.local_net(x)), self.global_net(x)


def standardise_per_image_channel(t: Tensor, eps: float = 1e-6) -> Tensor:
    """z-score every (image, channel) over its spatial positions (unbiased std, as the official code).

    The official code divides by the std without an epsilon; ``eps`` only matters for a constant
    channel, where it avoids a division by zero.
    """
    flat = t.flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True, unbiased=True) if flat.shape[2] > 1 else torch.ones_like(mean)
    return ((flat - mean) / (std + eps)).view_as(t)


class GridBranch(nn.Module):
    """One grid pair (local + global) with its own fusion stack and 1x1 recovery conv.

    (local coords, global coords) -> [B, C, h, w]. ``standardise`` z-scores the 2C-channel sample
    before the fusion stack (the abnormal branch does, the normal branch does not).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        local_resolution: int,
        global_resolution: int,
        fusion_blocks: int,
        standardise: bool,
    ) -> None:
        super().__init__()
        self.local_grid = LocalGrid(channels, local_resolution, 2)
        self.global_grid = GlobalGrid(channels, height, width, global_resolution, 2)
        self.fusion = fusion_network("basic", 2 * channels, fusion_blocks)
        self.recover = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.standardise = standardise

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.local_grid.grid, self.global_grid.grid]

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.fusion.parameters()) + list(self.recover.parameters())

    def forward(self, local_coords: Tensor, global_coords: Tensor) -> Tensor:
        sample = torch.cat([self.global_grid(global_coords), self.local_grid(local_coords)], dim=1)
        if self.standardise:
            sample = standardise_per_image_channel(sample)
        return self.recover(self.fusion(sample))


@dataclass
class BiGridReconstruction:
    """Everything the normal-stage loss and the scorer need, at feature resolution."""

    features: Tensor  # x [B, C, h, w]
    normal: Tensor  # f_n
    abnormal: Tensor | None  # f_a (None when the abnormal grid is off)
    fused: Tensor  # before refinement
    refined: Tensor  # x̂
    similarity: Tensor | None  # refinement S [B, 1, h, w] (None when refinement is off)


class BiGridGRADModel(nn.Module):
    """Bi-grid GRAD: frozen features, a shared coordinate mapper, normal and abnormal grid branches,
    fusion, refinement, and the distance map and image score (``model(images) -> AnomalyOutput``).

    Args:
        backbone: timm model name of the frozen feature extractor; the default
            ``tf_efficientnet_b6.aa_in1k`` carries the TF ImageNet weights lukemelas' package
            ships (the paper's backbone); ``tiny`` is a small random CNN for tests.
        layers: backbone stage indices (timm ``out_indices``), aligned and concatenated
            (EfficientNet-B6 2+3: 72 ch at stride 8 + 200 ch at stride 16 -> 272 channels).
        pretrained: load the weights timm associates with ``backbone`` (False = random features).
        weights_path: a local state-dict file of the full timm backbone (works offline).
        image_size: input size in pixels, int or [height, width]; fixes the feature size and so
            the global grids' shape. Set from ``data.init_args.image_size`` by the CLI.
        local_resolution: lattice points per axis of both local grids, R_l (GoodsAD headline 32).
        global_resolution: lattice points per axis of both global grids, R_g (GoodsAD headline 4).
        fusion_blocks: basic residual blocks in each branch's fusion stack (official 9).
        use_abnormal_grid: keep the abnormal grid pair; False = the paper's "N-grid only" ablation
            (a CRAD-like model with basic blocks).
        fusion_mode: how the branches combine: ``learned`` (official code: f_n + w·f_a with a
            learnable w) or ``convex`` (paper Eq. 2: λ·f_n + (1-λ)·f_a with a fixed λ).
        fusion_weight_init: initial value of the learnable w of ``learned`` fusion (official -0.2).
        fusion_lambda: the fixed λ of ``convex`` fusion, in [0, 1].
        jitter_std: standard deviation of the Gaussian noise on local coordinates in training (0.05).
        jitter_p: probability the coordinate noise is applied (official 0.5).
        jitter_mode: ``iteration`` (official: all pixels on a fraction of the calls) or ``pixel``.
        use_refinement: CRAD's feature refinement of the fused reconstruction (Eq. 5-6 of CRAD).
        refine_mse_weight: weight of the 1[mse <= threshold] term of the refinement similarity (0.3).
        refine_cos_weight: weight of the cosine term of the refinement similarity (0.7).
        refine_mse_threshold: per-position mean squared difference k of the refinement (10).
        init_std: N(0, init_std) re-initialisation of every conv / linear outside the backbone and
            the grids (what the UniAD-based official code base does without an initializer).
        blur_anomaly_map: return the box-blurred distance map as the anomaly map (official).
        image_score: rule from the map to the image score: ``blur_pool_max`` (official), ``max``
            or ``pool_max`` (see ``components.refinement.distance_map_and_score``).
        blur_kernel: box-blur width in pixels; None = the official 21 px at 224 px, scaled.
        pool_kernel: box-pool width in pixels; None = the official 32 px at 224 px, scaled.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int | Sequence[int] = 256,
        local_resolution: int = 32,
        global_resolution: int = 4,
        fusion_blocks: int = 9,
        use_abnormal_grid: bool = True,
        fusion_mode: FusionMode = "learned",
        fusion_weight_init: float = -0.2,
        fusion_lambda: float = 0.8,
        jitter_std: float = 0.05,
        jitter_p: float = 0.5,
        jitter_mode: Literal["iteration", "pixel"] = "iteration",
        use_refinement: bool = True,
        refine_mse_weight: float = 0.3,
        refine_cos_weight: float = 0.7,
        refine_mse_threshold: float = 10.0,
        init_std: float = 0.01,
        blur_anomaly_map: bool = True,
        image_score: DistanceImageScore = "blur_pool_max",
        blur_kernel: int | None = None,
        pool_kernel: int | None = None,
    ) -> None:
        super().__init__()
        if fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {fusion_mode!r}")
        for name, value in (("local_resolution", local_resolution), ("global_resolution", global_resolution)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.image_size = as_height_width(image_size)
        self.feature_extractor = TimmFeatureExtractor(backbone, layers, pretrained, weights_path)
        channels = self.feature_extractor.out_channels
        height, width = self.feature_extractor.feature_size(self.image_size)
        self.feature_shape = (channels, height, width)
        self.mapper = SharedCoordinateMapper(channels, jitter_std, jitter_p, jitter_mode)
        branch = dict(
            channels=channels,
            height=height,
            width=width,
            local_resolution=local_resolution,
            global_resolution=global_resolution,
            fusion_blocks=fusion_blocks,
        )
        self.normal = GridBranch(**branch, standardise=False)
        self.abnormal = GridBranch(**branch, standardise=True) if use_abnormal_grid else None
        self.fusion_mode = fusion_mode
        if fusion_mode == "learned":
            self.fusion_weight = nn.Parameter(torch.tensor(float(fusion_weight_init)))
        else:
            if not 0.0 <= fusion_lambda <= 1.0:
                raise ValueError(f"fusion_lambda must be in [0, 1], got {fusion_lambda}")
            self.register_buffer("fusion_lambda", torch.tensor(float(fusion_lambda)))
        self.use_refinement = use_refinement
        self.refine_args = (refine_mse_weight, refine_cos_weight, refine_mse_threshold)
        self._reinitialise(init_std)
        self.scoring = dict(blur_kernel=blur_kernel, pool_kernel=pool_kernel, blur_anomaly_map=blur_anomaly_map,
                            image_score=image_score)
        distance_map_and_score(torch.zeros(1, 1, 1), (1, 1), **self.scoring)  # fail now on a bad rule

    # ------------------------------------------------------------------------------ structure
    @property
    def use_abnormal_grid(self) -> bool:
        return self.abnormal is not None

    def _reinitialise(self, std: float) -> None:
        modules = [self.mapper, self.normal] + ([self.abnormal] if self.abnormal is not None else [])
        for root in modules:
            for m in root.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def grid_parameters(self) -> list[nn.Parameter]:
        """All grid lattices (trained with the 100x larger learning rate)."""
        grids = self.normal.grid_parameters()
        return grids + (self.abnormal.grid_parameters() if self.abnormal is not None else [])

    def network_parameters(self) -> list[nn.Parameter]:
        """Every trainable non-grid parameter (mapper, both fusion stacks, recovery convs, w)."""
        params = list(self.mapper.parameters()) + self.normal.network_parameters()
        if self.abnormal is not None:
            params += self.abnormal.network_parameters()
        if self.fusion_mode == "learned":
            params.append(self.fusion_weight)
        return params

    # ------------------------------------------------------------------------------- forward
    def extract_features(self, images: Tensor) -> Tensor:
        """Frozen features x [B, C, h, w]; checks the size the global grids were built for."""
        features = self.feature_extractor(images)
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"BiGridGRAD was built for image_size={self.image_size} (features {self.feature_shape}) but "
                f"got images {tuple(images.shape[-2:])} -> features {tuple(features.shape[1:])}; the model's "
                "image_size must equal data.init_args.image_size"
            )
        return features

    def abnormal_output(self, features: Tensor) -> Tensor:
        """f_a [B, C, h, w] for (possibly pasted) features; its channel 0 is the similarity d."""
        if self.abnormal is None:
            raise RuntimeError("the abnormal grid is switched off (use_abnormal_grid=False)")
        local_coords, global_coords = self.mapper(features)
        return self.abnormal(local_coords, global_coords)

    def fuse(self, normal: Tensor, abnormal: Tensor | None) -> Tensor:
        if abnormal is None:
            return normal
        if self.fusion_mode == "learned":
            return normal + self.fusion_weight * abnormal
        return self.fusion_lambda * normal + (1.0 - self.fusion_lambda) * abnormal

    def reconstruct(self, features: Tensor) -> BiGridReconstruction:
        """Both branches from the same coordinates, fusion and refinement."""
        local_coords, global_coords = self.mapper(features)
        normal = self.normal(local_coords, global_coords)
        abnormal = self.abnormal(local_coords, global_coords) if self.abnormal is not None else None
        fused = self.fuse(normal, abnormal)
        if self.use_refinement:
            refined, similarity = refine_features(features, fused, *self.refine_args)
        else:
            refined, similarity = fused, None
        return BiGridReconstruction(features, normal, abnormal, fused, refined, similarity)

    def distance(self, images: Tensor) -> Tensor:
        """Anomaly distance at feature resolution, [B, h, w] (larger = more anomalous)."""
        features = self.extract_features(images)
        return feature_distance(features, self.reconstruct(features).refined)

    def forward(self, images: Tensor) -> AnomalyOutput:
        anomaly_map, score = distance_map_and_score(self.distance(images), tuple(images.shape[-2:]), **self.scoring)
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=score)
