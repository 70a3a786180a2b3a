"""CRAD against numbers produced by the official code (tae-mo/CRAD @ c8f8e43).

The fixtures in ``tests/fixtures/parity/crad/`` hold seeded inputs, the official model's weights
(its own parameter names) and what the official code returned; ``PROVENANCE.md`` there says how
they were made. Our modules get the same weights and must return the same numbers.

Every call into ``anomaly_bench`` goes through the adapters below, so a rename in the package
only needs an edit here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from anomaly_bench.models.components.refinement import (
    distance_map_and_score,
    feature_distance,
    refine_features,
    upsample_map,
)
from anomaly_bench.models.crad.torch_model import CRADHead

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "crad"
# max |ours - official| <= TOLERANCE * max(1, max |official|): both sides compute in float32, whose
# sums over hundreds of channels differ in the last bits between implementations (~1e-6 of the scale).
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- adapters
def official_to_our_head_keys(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the official ``CRAD`` state dict (crad.py / mobilenetv3.py) to ``CRADHead``'s names."""
    fixed = {
        "query.0": "grids.local_grid.grid",
        "query.1": "grids.global_grid.grid",
        "coord.0.weight": "grids.local_coords.net.0.weight",
        "coord.0.bias": "grids.local_coords.net.0.bias",
        "coord.2.weight": "grids.local_coords.net.2.weight",
        "coord.2.bias": "grids.local_coords.net.2.bias",
        "coord_.0.weight": "grids.global_coords.net.0.weight",
        "coord_.0.bias": "grids.global_coords.net.0.bias",
        "coord_.2.weight": "grids.global_coords.net.2.weight",
        "coord_.2.bias": "grids.global_coords.net.2.bias",
        "recover.weight": "recover.weight",
    }
    # MobileBottleneck.conv: 0 pw conv, 1 BN, 2 h-swish, 3 dw conv, 4 BN, 5 SE, 6 h-swish, 7 pw conv, 8 BN
    block_parts = {"0": "expand.0", "1": "expand.1", "3": "depthwise.0", "4": "depthwise.1",
                   "5.fc.0": "se.fc.0", "5.fc.2": "se.fc.2", "7": "project.0", "8": "project.1"}
    ours = {}
    for key, value in official.items():
        if key in fixed:
            ours[fixed[key]] = value
            continue
        _, index, _, rest = key.split(".", 3)  # layer.<i>.conv.<rest>
        part, attribute = rest.rsplit(".", 1)
        ours[f"fusion.{index}.{block_parts[part]}.{attribute}"] = value
    return ours


def our_crad_head(official: dict[str, Tensor], channels: int, height: int, width: int, local_resolution: int,
                  global_resolution: int, blocks: int, expansion: int) -> nn.Module:
    """Our CRAD head with the official weights, in eval mode (no jitter, BN running statistics)."""
    head = CRADHead(
        channels, height, width, fusion="mobilenet_se", fusion_blocks=blocks,
        fusion_expansion_ratio=expansion / (2 * channels), local_resolution=local_resolution,
        global_resolution=global_resolution,
    )
    head.load_state_dict(official_to_our_head_keys(official), strict=True)
    return head.eval()


def our_head_forward(head: nn.Module, features: Tensor) -> tuple[Tensor, Tensor]:
    """(f_n before refinement, x_hat after refinement), both [B, C, h, w]."""
    with torch.no_grad():
        out = head(features)
    return out.normal, out.refined


def our_refine(features: Tensor, normal: Tensor) -> Tensor:
    """CRAD refinement with the official weights 0.3 / 0.7 and k = 10."""
    return refine_features(features, normal, 0.3, 0.7, 10.0)[0]


def our_distance_map(features: Tensor, refined: Tensor, size: tuple[int, int]) -> Tensor:
    """||x - x_hat|| per position, upsampled to ``size`` as the official ``self.upsample`` does."""
    return upsample_map(feature_distance(features, refined), size)


def our_map_and_score(distance: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(pixel map [B, H, W], image score [B]) from the feature-resolution distance, official kernels."""
    return distance_map_and_score(distance, size)


# ---------------------------------------------------------------------------------- fixtures
def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {key: data[key] for key in data.files}


def tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(array)).float() if array.dtype.kind == "f" else torch.from_numpy(array)


@pytest.fixture(scope="module")
def head_case() -> dict:
    data = load("head.npz")
    official = {key.split("/", 1)[1]: tensor(v) for key, v in data.items() if key.startswith("weight/")}
    features = tensor(data["input/features"])
    _, channels, height, width = features.shape
    head = our_crad_head(
        official, channels, height, width, int(data["config/local_resol"]), int(data["config/global_resol"]),
        int(data["config/layers"]), int(data["config/ch_exp"]),
    )
    outputs = {k: tensor(v) for k, v in data.items() if k.startswith("output/")}
    return {"head": head, "features": features, **outputs}


def max_diff(ours: Tensor, official: Tensor) -> float:
    """max |ours - official|, relative to the official tensor's scale when that exceeds 1."""
    assert ours.shape == official.shape, f"shape {tuple(ours.shape)} != official {tuple(official.shape)}"
    scale = max(1.0, float(official.float().abs().max()))
    return float((ours.float() - official.float()).abs().max()) / scale


# ------------------------------------------------------------------------------------- tests
def test_fixture_exercises_both_sides_of_the_refinement_indicator(head_case: dict) -> None:
    mse = (head_case["output/normal"] - head_case["features"]).pow(2).mean(dim=1)
    assert (mse <= 10).any() and (mse > 10).any()


def test_head_forward_matches_official(head_case: dict) -> None:
    normal, refined = our_head_forward(head_case["head"], head_case["features"])
    assert max_diff(normal, head_case["output/normal"]) <= TOLERANCE
    assert max_diff(refined, head_case["output/refined"]) <= TOLERANCE


def test_refinement_of_the_official_normal_matches_official(head_case: dict) -> None:
    refined = our_refine(head_case["features"], head_case["output/normal"])
    assert max_diff(refined, head_case["output/refined"]) <= TOLERANCE


def test_upsampled_distance_map_matches_official_pred(head_case: dict) -> None:
    pred = head_case["output/pred"][:, 0]
    ours = our_distance_map(head_case["features"], head_case["output/refined"], tuple(pred.shape[-2:]))
    assert max_diff(ours, pred) <= TOLERANCE


def test_score_map_and_image_score_match_official_evaluation() -> None:
    data = load("scores.npz")
    distance = tensor(data["input/distance"])
    pixel_map, image_score = our_map_and_score(distance, (224, 224))
    assert max_diff(pixel_map, tensor(data["output/pixel_map"])) <= TOLERANCE
    assert max_diff(image_score, tensor(data["output/image_score"])) <= TOLERANCE
