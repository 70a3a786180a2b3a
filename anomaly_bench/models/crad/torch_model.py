"""CRAD as a plain nn.Module: frozen features -> continuous local/global memory -> fused
normal representation -> refinement. Training and scoring glue lives in ``lightning_model.py``.

Pipeline for an input feature map x [B, C, H, W] (EfficientNet-B4, 224 px: C = 216, H = W = 28):

    grids  = concat(global_grid(v_g(x)), local_grid(jitter(v_l(x))))   [B, 2C, H, W]
    f_n    = recover(fusion(grids))                                      [B, C, H, W]
    x_hat  = S * x + (1 - S) * f_n,  S = 0.3 * 1[mse <= 10] + 0.7 * cos   (if refinement is on)
    d      = ||x - x_hat||_2 over channels                               [B, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from anomaly_bench.models.components.blocks import fusion_network
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.models.components.grid import LocalGlobalGrid
from anomaly_bench.models.components.refinement import feature_distance, refine_features


@dataclass
class Reconstruction:
    """What the reconstruction head produces for features x."""

    normal: Tensor  # f_n, the fused normal representation [B, C, H, W]
    refined: Tensor  # x_hat (= f_n when refinement is off) [B, C, H, W]
    similarity: Tensor | None  # S [B, 1, H, W], None when refinement is off


class CRADHead(nn.Module):
    """Everything CRAD trains: coordinate nets, grids, fusion network, recover conv.

    Args:
        channels, height, width: the feature map it reconstructs (the global grid stores whole maps).
        fusion: "mobilenet_se" (official final code: MobileNetV3 blocks with SE) or "basic"
            (paper v1 / first code: ResNet basic blocks).
        fusion_blocks: 11 (official) or 7 (paper v1).
        fusion_expansion_ratio: MobileNet expansion width / fusion channels: 2.0 = CRAD (864 for
            432 channels), 0.5 = CRAD-S (216).
        init_std: std of the N(0, std) init of every conv / linear (official 0.01; biases zero).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        use_local: bool = True,
        use_global: bool = True,
        local_resolution: int = 8,
        global_resolution: int = 4,
        local_dim: int = 2,
        global_dim: int = 2,
        use_jitter: bool = True,
        jitter_std: float = 0.05,
        jitter_p: float = 0.5,
        jitter_mode: str = "iteration",
        fusion: str = "mobilenet_se",
        fusion_blocks: int = 11,
        fusion_expansion_ratio: float = 2.0,
        use_refinement: bool = True,
        refine_mse_weight: float = 0.3,
        refine_cos_weight: float = 0.7,
        refine_mse_threshold: float = 10.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.grids = LocalGlobalGrid(
            channels,
            height,
            width,
            use_local=use_local,
            use_global=use_global,
            local_resolution=local_resolution,
            global_resolution=global_resolution,
            local_dim=local_dim,
            global_dim=global_dim,
            jitter_std=jitter_std if use_jitter else 0.0,
            jitter_p=jitter_p if use_jitter else 0.0,
            jitter_mode=jitter_mode,
        )
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

    def forward(self, x: Tensor) -> Reconstruction:
        f_n = self.recover(self.fusion(self.grids(x)))
        if not self.use_refinement:
            return Reconstruction(normal=f_n, refined=f_n, similarity=None)
        refined, s = refine_features(x, f_n, *self.refine_args)
        return Reconstruction(normal=f_n, refined=refined, similarity=s)


class CRADModel(nn.Module):
    """Frozen feature extractor + ``CRADHead``. ``image_size`` fixes the feature map size (the
    global grid stores whole maps), so data must be resized to it."""

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int = 224,
        **head_kwargs,
    ) -> None:
        super().__init__()
        self.extractor = TimmFeatureExtractor(backbone, layers, pretrained, weights_path)
        self.image_size = int(image_size)
        h, w = self.extractor.feature_size(self.image_size)
        self.feature_shape = (self.extractor.out_channels, h, w)
        self.head = CRADHead(self.extractor.out_channels, h, w, **head_kwargs)

    def features(self, images: Tensor) -> Tensor:
        return self.extractor(images)

    def reconstruct(self, features: Tensor) -> Reconstruction:
        return self.head(features)

    def distance(self, images: Tensor) -> Tensor:
        """Feature-resolution anomaly map d [B, h, w] (float32)."""
        x = self.features(images)
        return feature_distance(x, self.reconstruct(x).refined)

    def forward(self, images: Tensor) -> Tensor:
        return self.distance(images)
