"""CRAD as a plain nn.Module that owns inference: images -> AnomalyOutput (no Lightning).

Pipeline for an input feature map x [B, C, H, W] (EfficientNet-B4, 224 px: C = 216, H = W = 28):

    grids  = concat(global_grid(v_g(x)), local_grid(jitter(v_l(x))))   [B, 2C, H, W]
    f_n    = recover(fusion(grids))                                      [B, C, H, W]
    x_hat  = S * x + (1 - S) * f_n,  S = 0.3 * 1[mse <= 10] + 0.7 * cos   (if refinement is on)
    d      = ||x - x_hat||_2 over channels                               [B, H, W]
    map, score = distance_map_and_score(d)   (upsample, 21 px box blur, 32 px box pool, max)

Training glue (optimisers, the feature cache) lives in ``lightning_model.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from anomaly_bench.models.components.blocks import fusion_network
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.models.components.grid import LocalGlobalGrid
from anomaly_bench.models.components.refinement import (
    DistanceImageScore,
    distance_map_and_score,
    feature_distance,
    refine_features,
)
from anomaly_bench.types import AnomalyOutput, as_height_width


@dataclass
class FeatureReconstruction:
    """What CRAD's head produces for features x."""

    normal: Tensor  # f_n, the fused normal representation [B, C, H, W]
    refined: Tensor  # x_hat (= f_n when refinement is off) [B, C, H, W]
    similarity: Tensor | None  # S [B, 1, H, W], None when refinement is off


class CRADHead(nn.Module):
    """Everything CRAD trains: coordinate nets, grids, fusion network, recover conv.

    Args:
        channels: feature channels C of the map the head reconstructs.
        height: feature-map height (the global grid stores whole maps, so it is fixed).
        width: feature-map width.
        fusion: fusion network between the grids and the recover conv: ``mobilenet_se``
            (official final code: MobileNetV3 blocks with squeeze-excitation) or ``basic``
            (paper v1 / first code: ResNet basic blocks).
        fusion_blocks: number of fusion blocks (official 11, paper v1 7).
        fusion_expansion_ratio: MobileNet expansion width / fusion channels: 2.0 = CRAD (864
            for 432 channels), 0.5 = CRAD-S (216); unused by ``basic`` blocks.
        use_refinement: pull the reconstruction back to the input where they already agree
            (paper Eq. 5-6); False reconstructs with f_n alone.
        refine_mse_weight: weight of the 1[mse <= threshold] term of the similarity S (official 0.3).
        refine_cos_weight: weight of the cosine term of the similarity S (official 0.7).
        refine_mse_threshold: per-position mean squared difference k under which f_n counts as
            agreeing with x (official 10).
        init_std: standard deviation of the N(0, std) init of every conv and linear layer
            (official 0.01; biases zero, batch norms (1, 0), grids keep their Xavier init).
        **grid_options: the grid and jitter options of ``LocalGlobalGrid`` (``use_local``,
            ``local_resolution``, ``jitter_std``...).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        fusion: Literal["mobilenet_se", "basic"] = "mobilenet_se",
        fusion_blocks: int = 11,
        fusion_expansion_ratio: float = 2.0,
        use_refinement: bool = True,
        refine_mse_weight: float = 0.3,
        refine_cos_weight: float = 0.7,
        refine_mse_threshold: float = 10.0,
        init_std: float = 0.01,
        **grid_options,
    ) -> None:
        super().__init__()
        self.grids = LocalGlobalGrid(channels, height, width, **grid_options)
        fused = self.grids.out_channels
        expansion = max(1, int(round(fused * fusion_expansion_ratio)))
        self.fusion = fusion_network(fusion, fused, fusion_blocks, expansion)
        self.recover = nn.Conv2d(fused, channels, 1, bias=False)
        self.use_refinement = use_refinement
        self.refine_args = (refine_mse_weight, refine_cos_weight, refine_mse_threshold)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        # Official: no initializer configured -> every conv/linear N(0, 0.01), zero bias, BN (1, 0);
        # the grids keep their Xavier-normal init.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def grid_parameters(self) -> list[nn.Parameter]:
        return self.grids.grid_parameters()

    def forward(self, x: Tensor) -> FeatureReconstruction:
        f_n = self.recover(self.fusion(self.grids(x)))
        if not self.use_refinement:
            return FeatureReconstruction(normal=f_n, refined=f_n, similarity=None)
        refined, s = refine_features(x, f_n, *self.refine_args)
        return FeatureReconstruction(normal=f_n, refined=refined, similarity=s)


class CRADModel(nn.Module):
    """CRAD: frozen features, ``CRADHead`` reconstruction, distance map and image score.

    ``model(images) -> AnomalyOutput``: ``anomaly_map`` [B, H, W] at the input size and
    ``pred_score`` [B], raw (larger = more anomalous).

    Args:
        backbone: timm model name of the frozen feature extractor (default the TF-ported
            EfficientNet-B4, the weights family of the official lukemelas backbone), or ``tiny``
            (a small random CNN for tests).
        layers: backbone stage indices (timm ``out_indices``) whose maps are aligned to the first
            one's resolution and concatenated (EfficientNet-B4 2+3: 56 + 160 = 216 channels).
        pretrained: load the weights timm associates with ``backbone`` (False = random features).
        weights_path: a local state-dict file of the full timm backbone (works offline).
        image_size: input size in pixels, int (square) or [height, width]; fixes the feature-map
            size the global grid stores. Set from ``data.init_args.image_size`` by the CLI.
        blur_anomaly_map: return the box-blurred distance map as the anomaly map (official).
        image_score: rule from the map to the image score: ``blur_pool_max`` (official), ``max``
            or ``pool_max`` (see ``components.refinement.distance_map_and_score``).
        blur_kernel: box-blur width in pixels; None = the official 21 px at 224 px, scaled.
        pool_kernel: box-pool width in pixels; None = the official 32 px at 224 px, scaled.
        channels_last: run the backbone in channels-last memory format (faster on recent GPUs).
        **head_options: the memory, fusion and refinement options of ``CRADHead`` and its grids.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int | Sequence[int] = 224,
        blur_anomaly_map: bool = True,
        image_score: DistanceImageScore = "blur_pool_max",
        blur_kernel: int | None = None,
        pool_kernel: int | None = None,
        channels_last: bool = False,
        **head_options,
    ) -> None:
        super().__init__()
        self.image_size = as_height_width(image_size)
        self.feature_extractor = TimmFeatureExtractor(backbone, layers, pretrained, weights_path)
        h, w = self.feature_extractor.feature_size(self.image_size)
        self.feature_shape = (self.feature_extractor.out_channels, h, w)
        self.head = CRADHead(self.feature_extractor.out_channels, h, w, **head_options)
        self.scoring = dict(blur_kernel=blur_kernel, pool_kernel=pool_kernel, blur_anomaly_map=blur_anomaly_map,
                            image_score=image_score)
        distance_map_and_score(torch.zeros(1, 1, 1), (1, 1), **self.scoring)  # fail now on a bad rule
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.feature_extractor.to(memory_format=torch.channels_last)

    def extract_features(self, images: Tensor) -> Tensor:
        """Frozen features x [B, C, h, w]; checks the size the global grid was built for."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.feature_extractor(images)
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"CRAD was built for image_size={self.image_size} (features {self.feature_shape}) but got images "
                f"{tuple(images.shape[-2:])} -> features {tuple(features.shape[1:])}; the model's image_size must "
                "equal data.init_args.image_size"
            )
        return features

    def reconstruct(self, features: Tensor) -> FeatureReconstruction:
        return self.head(features)

    def distance(self, images: Tensor) -> Tensor:
        """Feature-resolution distance d [B, h, w] (float32)."""
        x = self.extract_features(images)
        return feature_distance(x, self.reconstruct(x).refined)

    def forward(self, images: Tensor) -> AnomalyOutput:
        anomaly_map, score = distance_map_and_score(self.distance(images), tuple(images.shape[-2:]), **self.scoring)
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=score)

