"""DINO ViT token extractor (timm), frozen: ViT-B/8 by name, from a local file, or tiny random init."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

DINO_VITB8 = "vit_base_patch8_224.dino"


class DinoLoadError(RuntimeError):
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
    if weights is not None:
        if not Path(weights).is_file():
            raise DinoLoadError(f"dino_weights file not found: {weights}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # offline hub, unknown name, bad file
        raise DinoLoadError(
            f"could not create pretrained timm model {name!r}"
            + (f" from {weights!r}" if weights else "")
            + f": {type(err).__name__}: {err}\nWithout network access, download the DINO ViT-B/8 weights "
            "elsewhere and pass their local file as dino_weights, or use dino: tiny (random init)."
        ) from err


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
