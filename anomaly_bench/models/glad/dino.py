"""DINO ViT token extractor (timm), frozen: ViT-B/8 by name, from a local file, or tiny random init."""

from __future__ import annotations


from torch import Tensor, nn

from anomaly_bench.models.components.weights import (
    WeightsUnavailableError, part_name, resolve_weights, timm_status,
)

DINO_VITB8 = "vit_base_patch8_224.dino"


class DinoLoadError(WeightsUnavailableError):
    """The DINO weights could not be loaded (offline, wrong file)."""


def build_vit(
    name: str = DINO_VITB8, weights: str | None = None, tiny_image_size: int = 32, pretrained: bool = True
) -> nn.Module:
    """A timm ViT without classifier, accepting any input size (``dynamic_img_size``).

    ``name="tiny"``: 4 blocks, width 48, patch 4, random init (tests, demo). Otherwise a timm model
    name, pretrained from the hub or from ``weights`` (a local .pth/.safetensors file) when given;
    ``pretrained=False`` gives the architecture with random weights (speed benchmarks).
    """
    import timm

    if name == "tiny":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=tiny_image_size, patch_size=4, embed_dim=48, depth=4, num_heads=3,
            num_classes=0, dynamic_img_size=True,
        )
    kwargs: dict = dict(num_classes=0, dynamic_img_size=True)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    # local file, then the caches, then the hub only if reachable: never wait for timeouts offline
    status = timm_status(name, weights, part_name("DINO", name), "model.init_args.dino_weights")
    local = resolve_weights(status, DinoLoadError)
    if local is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(local))
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # hub failure, unknown name, bad file
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise status.error(f"creating timm model {name!r} failed: {type(err).__name__}: {first_line}",
                           DinoLoadError) from err


class DinoFeatures(nn.Module):
    """Patch tokens after chosen transformer blocks (1-based), before the final LayerNorm, CLS dropped."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def train(self, mode: bool = True) -> "DinoFeatures":
        return super().train(False)  # frozen: always eval

    def forward(self, images: Tensor, blocks: list[int]) -> list[Tensor]:
        if min(blocks) < 1 or max(blocks) > self.depth:
            raise ValueError(f"DINO blocks must be in 1..{self.depth}, got {blocks}")
        return self.vit.forward_intermediates(
            images, indices=[b - 1 for b in blocks], norm=False, output_fmt="NLC",
            intermediates_only=True, stop_early=True,
        )
