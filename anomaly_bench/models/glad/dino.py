"""DINO ViT token extractor (timm), frozen: ViT-B/8 by name, from a local file, or tiny random init."""

from __future__ import annotations


import math
import types

import torch
import torch.nn.functional as F
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


def dino_position_embedding(vit: nn.Module, x: Tensor) -> Tensor:
    """Tokens plus position embeddings the way the official DINO code resizes them off its grid.

    DINO's ``interpolate_pos_encoding`` resizes the g x g patch embeddings bicubically with
    ``scale_factor = (rows + 0.1) / g, (cols + 0.1) / g`` and no antialiasing; timm resizes to the
    target size with antialiasing, which differs by up to ~6 % of the tokens' scale at twice the
    grid (GLAD scores ViT-B/8, trained at 224 px, at 512 px). ``x``: patch tokens [B, rows, cols, C].
    """
    batch, rows, cols, channels = x.shape
    prefix = vit.num_prefix_tokens
    pos = vit.pos_embed
    grid = math.sqrt(pos.shape[1] - prefix)
    patch_pos = pos[:, prefix:]
    if not (rows == cols and rows * cols == patch_pos.shape[1]):
        square = patch_pos.reshape(1, int(grid), int(grid), channels).permute(0, 3, 1, 2)
        resized = F.interpolate(square.float(), scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
                                mode="bicubic", align_corners=False).to(pos.dtype)
        if resized.shape[-2:] != (rows, cols):
            raise ValueError(f"DINO position embeddings resized to {tuple(resized.shape[-2:])}, expected {(rows, cols)}")
        patch_pos = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, channels)
    tokens = torch.cat([vit.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, channels)], dim=1)
    return vit.pos_drop(tokens + torch.cat([pos[:, :prefix], patch_pos], dim=1))


class DinoFeatures(nn.Module):
    """Patch tokens after chosen transformer blocks (1-based), before the final LayerNorm, CLS dropped.

    Off the ViT's training grid the position embeddings are resized as the official DINO code does
    (``dino_position_embedding``), not as timm does.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        if getattr(vit, "dynamic_img_size", False) and getattr(vit, "cls_token", None) is not None \
                and not getattr(vit, "no_embed_class", False) and getattr(vit, "reg_token", None) is None:
            vit._pos_embed = types.MethodType(dino_position_embedding, vit)

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
