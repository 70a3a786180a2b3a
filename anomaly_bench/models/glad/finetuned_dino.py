"""A fine-tuned DINO for GLAD's final scoring, next to a frozen copy of the original DINO for ADS.

The official code builds one pretrained DINO, keeps a deep copy of it for the ADS stop rule, and
only then loads the per-class fine-tuned weights (VisA, PCB-Bank; the DDAD recipe) into the scoring
DINO. ADS therefore always measures drift with the original features, whatever the scoring uses.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly_bench.models.glad.dino import DinoFeatures, DinoLoadError

SCORING_DINO_SETTING = "model.init_args.scoring_dino_weights"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ViT state dict from a ``.safetensors`` file or a torch file (plain or under ``state_dict`` /
    ``model``), with a DataParallel ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise DinoLoadError(f"fine-tuned DINO weights not found: {path} does not exist; set {SCORING_DINO_SETTING} "
                            "to a state-dict file of the scoring DINO (.pth/.pt/.safetensors) or to null")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor) of the DINO ViT, "
                         f"got {type(state).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_finetuned_weights(features: DinoFeatures, path: str | Path) -> None:
    """Load a fine-tuned state dict into ``features``' ViT (same architecture; strict)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(read_state_dict(path), features.vit)
    try:
        features.vit.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: does not fit the DINO ViT of this model ({first}); {SCORING_DINO_SETTING} must be "
                         "a state dict of the same architecture as model.init_args.dino") from err
    features.vit.eval().requires_grad_(False)


def split_scoring_dino(original: DinoFeatures, scoring_weights: str | None) -> tuple[DinoFeatures, nn.Module | None]:
    """(scoring DINO, separate ADS DINO or None).

    Without fine-tuned weights both roles use ``original`` (the official copy would hold identical
    weights; sharing saves a ViT-B/8). With them, ADS gets a frozen deep copy of ``original`` taken
    before the fine-tuned weights are loaded into the scoring DINO, as in the official code.
    """
    if scoring_weights is None:
        return original, None
    frozen = copy.deepcopy(original).eval().requires_grad_(False)
    load_finetuned_weights(original, scoring_weights)
    return original, frozen
