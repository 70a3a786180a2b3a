"""PatchCore as a plain ``nn.Module``: images -> locally aware patch embeddings -> nearest-neighbour scores.

Inference lives here entirely (``forward``), so the module can be exported on its own; fitting
(collecting training embeddings, coreset selection) is done by the Lightning glue, which hands the
result to ``set_memory_bank``. The memory bank is a buffer whose row count is only known after
fitting: ``_load_from_state_dict`` resizes it to the stored one, so a plain ``load_state_dict`` (or
a Lightning checkpoint) restores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.blur import gaussian_blur
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.models.patchcore.embedding import LocallyAwarePatchEmbedding
from anomaly_bench.models.patchcore.scoring import nearest_neighbours, reweighted_image_scores
from anomaly_bench.types import AnomalyOutput

Distance = Literal["euclidean", "squared_euclidean"]
ImageScore = Literal["reweighted", "max"]


class PatchCoreModel(nn.Module):
    """PatchCore (Roth et al., CVPR 2022): a memory bank of nominal patch features, scored by nearest neighbour.

    Args:
        backbone: timm model name of the frozen feature extractor; ``wide_resnet50_2.tv_in1k`` is
            torchvision's ImageNet checkpoint, the one the official code loads. ``tiny`` (or any
            timm name with ``pretrained: false``) gives random features for tests and demos.
        layers: backbone stages as timm ``out_indices`` whose maps are combined; for ResNets 2 and
            3 are layer2 (stride 8) and layer3 (stride 16). The first listed stage sets the patch grid.
        pretrained: load the weights timm associates with ``backbone`` (needs the hub or its cache).
        weights_path: a local state-dict file of the full timm model; implies pretrained weights
            and works offline.
        patch_size: side p of the neighbourhood averaged into every patch feature (p x p, zero
            padding at the border); 1 uses each position alone.
        pretrain_embed_dim: values each stage's neighbourhood vector is adaptively average-pooled
            to before the stages are merged (official ``pretrain_embed_dimension``).
        embed_dim: length of the final patch embedding, the stacked stages adaptively pooled
            again (official ``target_embed_dimension``).
        distance: patch score: ``euclidean`` (the paper's ‖·‖₂) or ``squared_euclidean`` (what
            the official FAISS ``IndexFlatL2`` search returns).
        image_score: ``reweighted`` (the paper's Eq. 7 weight on the largest patch score) or
            ``max`` (the largest patch score, as the official code computes it).
        reweight_neighbors: b, how many memory-bank neighbours of m* form the reweighting's
            softmax (>= 2; only used by ``image_score: reweighted``).
        blur_sigma: standard deviation in input pixels of the Gaussian that smooths the
            upsampled anomaly map (0 switches smoothing off).
        bank_chunk_size: memory-bank rows compared per matrix product during the nearest-neighbour
            search; bounds memory, never changes the result.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        patch_size: int = 3,
        pretrain_embed_dim: int = 1024,
        embed_dim: int = 1024,
        distance: Distance = "euclidean",
        image_score: ImageScore = "reweighted",
        reweight_neighbors: int = 9,
        blur_sigma: float = 4.0,
        bank_chunk_size: int = 16384,
    ) -> None:
        super().__init__()
        _check_choice("distance", distance, Distance)
        _check_choice("image_score", image_score, ImageScore)
        for name, value in (("pretrain_embed_dim", pretrain_embed_dim), ("embed_dim", embed_dim),
                            ("bank_chunk_size", bank_chunk_size)):
            if int(value) < 1:
                raise ValueError(f"PatchCore {name} must be >= 1, got {value}")
        if image_score == "reweighted" and reweight_neighbors < 2:
            raise ValueError(
                f"PatchCore reweight_neighbors must be >= 2 with image_score 'reweighted' (b = 1 makes every "
                f"weight 0), got {reweight_neighbors}; use image_score 'max' for the unweighted score"
            )
        if blur_sigma < 0:
            raise ValueError(f"PatchCore blur_sigma must be >= 0 (0 = no smoothing), got {blur_sigma}")
        self.extractor = TimmFeatureExtractor(backbone=backbone, layers=layers, pretrained=pretrained,
                                              weights_path=weights_path)
        self.embedding = LocallyAwarePatchEmbedding(self.extractor.stage_channels, patch_size=patch_size,
                                                    pretrain_embed_dim=pretrain_embed_dim, embed_dim=embed_dim)
        self.distance = distance
        self.image_score = image_score
        self.reweight_neighbors = int(reweight_neighbors)
        self.blur_sigma = float(blur_sigma)
        self.bank_chunk_size = int(bank_chunk_size)
        self.register_buffer("memory_bank", torch.empty(0, int(embed_dim)))

    # ------------------------------------------------------------------------------- embedding
    @property
    def embed_dim(self) -> int:
        return self.embedding.embed_dim

    def embed_grid(self, images: Tensor) -> Tensor:
        """images ``[B, 3, H, W]`` -> patch embeddings on the first stage's grid ``[B, h, w, embed_dim]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"PatchCore expects images [B, 3, H, W], got {tuple(images.shape)}")
        with torch.no_grad():
            grid = self.embedding(self.extractor.stages(images))
        return grid.permute(0, 2, 3, 1)

    def embed(self, images: Tensor) -> Tensor:
        """images ``[B, 3, H, W]`` -> one row per patch, ``[B·h·w, embed_dim]`` (float32)."""
        return self.embed_grid(images).reshape(-1, self.embed_dim).float()

    # ------------------------------------------------------------------------------ memory bank
    @property
    def is_fitted(self) -> bool:
        return self.memory_bank.shape[0] > 0

    def set_memory_bank(self, bank: Tensor) -> None:
        """Install ``bank`` ``[N, embed_dim]`` (N >= 1) as the memory bank, on this module's device."""
        if bank.ndim != 2 or bank.shape[1] != self.embed_dim or bank.shape[0] < 1:
            raise ValueError(f"PatchCore memory bank must be [N >= 1, {self.embed_dim}], got {tuple(bank.shape)}")
        self.memory_bank = bank.detach().to(self.memory_bank.device, torch.float32).contiguous()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "memory_bank")
        if isinstance(stored, Tensor) and stored.ndim == 2 and stored.shape != self.memory_bank.shape:
            # the bank's row count is only known after fitting: make room for the stored one
            self.memory_bank = torch.empty(stored.shape, dtype=self.memory_bank.dtype, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------- inference
    def forward(self, images: Tensor) -> AnomalyOutput:
        """images ``[B, 3, H, W]`` (ImageNet-normalised) -> raw anomaly maps ``[B, H, W]`` and scores ``[B]``."""
        if not self.is_fitted:
            raise RuntimeError("PatchCore has an empty memory bank: fit the model (or load a fitted checkpoint) first")
        grid = self.embed_grid(images)
        batch, h, w, dim = grid.shape
        patches = grid.reshape(batch * h * w, dim)
        squared, nn_index = nearest_neighbours(patches, self.memory_bank, self.bank_chunk_size)
        scores = squared.sqrt() if self.distance == "euclidean" else squared
        scores = scores.view(batch, h * w)
        if self.image_score == "max":
            pred_score = scores.amax(1)
        else:
            pred_score = reweighted_image_scores(scores, nn_index.view(batch, h * w), patches.view(batch, h * w, dim),
                                                 self.memory_bank, self.reweight_neighbors)
        anomaly_map = F.interpolate(scores.view(batch, 1, h, w), size=images.shape[-2:], mode="bilinear",
                                    align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(anomaly_map, self.blur_sigma)
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=pred_score)


def _check_choice(name: str, value: Any, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"PatchCore {name} must be one of {allowed}, got {value!r}")
