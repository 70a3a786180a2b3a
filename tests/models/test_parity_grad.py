"""Bi-grid GRAD against numbers produced by the public GRAD model file (class ``GRAD`` and
``compute_con_loss``; unattributed, identified by content hash in the fixture's PROVENANCE.md).

``tests/fixtures/parity/grad/`` holds seeded inputs, the file's weights (its own parameter names)
and what its ``GRAD.forward`` (eval mode) and ``compute_con_loss`` returned. Our modules get the
same weights and must return the same numbers.

Every call into ``anomaly_bench`` goes through the adapters below, so a rename in the package
only needs an edit here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from anomaly_bench.models.components.losses import truncated_l1_loss
from anomaly_bench.models.components.refinement import feature_distance, upsample_map
from anomaly_bench.models.grad.torch_model import BiGridGRADModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "grad"
# max |ours - official| <= TOLERANCE * max(1, max |official|) (float32 on both sides).
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- adapters
def official_to_our_keys(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the public file's ``GRAD`` state dict to ``BiGridGRADModel``'s names."""
    fixed = {
        "weight_normal": "fusion_weight",
        "coord.0.weight": "mapper.local_net.net.0.weight", "coord.0.bias": "mapper.local_net.net.0.bias",
        "coord.2.weight": "mapper.local_net.net.2.weight", "coord.2.bias": "mapper.local_net.net.2.bias",
        "coord_.0.weight": "mapper.global_net.net.0.weight", "coord_.0.bias": "mapper.global_net.net.0.bias",
        "coord_.2.weight": "mapper.global_net.net.2.weight", "coord_.2.bias": "mapper.global_net.net.2.bias",
    }
    branch = {"normal": "normal", "abnormal": "abnormal"}
    block_parts = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4"}
    ours = {}
    for key, value in official.items():
        if key in fixed:
            ours[fixed[key]] = value
        elif key.startswith("query_"):  # query_<branch>.<0 local | 1 global>
            name, index = key[len("query_"):].split(".")
            ours[f"{branch[name]}.{'local_grid' if index == '0' else 'global_grid'}.grid"] = value
        elif key.startswith("recover_"):
            ours[f"{branch[key[len('recover_'):].split('.')[0]]}.recover.weight"] = value
        else:  # layer_<branch>.0.<block>.<conv1|bn1|conv2|bn2>.<attribute>
            layer, _, block, part, attribute = key.split(".")
            ours[f"{branch[layer[len('layer_'):]]}.fusion.{block}.{block_parts[part]}.{attribute}"] = value
    return ours


def our_bigrid_model(official: dict[str, Tensor], channels: int, height: int, local_resolution: int,
                     global_resolution: int, blocks: int) -> nn.Module:
    """Our bi-grid model (learned fusion weight) with the public file's weights, in eval mode.

    The fixture feeds features directly, so the backbone only has to produce ``channels`` at
    ``height``: the random 'tiny' CNN's first stage (8 channels, stride 2).
    """
    assert channels == 8, "the adapter's tiny backbone stage has 8 channels"
    model = BiGridGRADModel(
        backbone="tiny", layers=(0,), pretrained=False, image_size=2 * height,
        local_resolution=local_resolution, global_resolution=global_resolution, fusion_blocks=blocks,
        fusion_mode="learned",
    )
    state = model.state_dict()
    mapped = official_to_our_keys(official)
    missing = sorted(k for k in state if k not in mapped and not k.startswith("feature_extractor."))
    assert not missing, f"weights the public file does not provide: {missing}"
    state.update(mapped)
    model.load_state_dict(state, strict=True)
    return model.eval()


def our_reconstruction(model: nn.Module, features: Tensor) -> dict[str, Tensor]:
    """normal f_n, abnormal f_a, fused f_n + w f_a, refined x_hat: all [B, C, h, w]."""
    with torch.no_grad():
        out = model.reconstruct(features)
    return {"normal": out.normal, "abnormal": out.abnormal, "fused": out.fused, "refined": out.refined}


def our_distance_map(features: Tensor, refined: Tensor, size: tuple[int, int]) -> Tensor:
    """||x - x_hat|| per position upsampled to ``size`` (the file's UpsamplingBilinear2d(8))."""
    return upsample_map(feature_distance(features, refined), size)


def our_contrastive_loss(similarity: Tensor, mask: Tensor, **options) -> Tensor:
    """Truncated L1 on the similarity d [B, h, w] with anomaly mask [B, h, w], threshold 0.5."""
    return truncated_l1_loss(similarity, mask, threshold=0.5, **options)


# ---------------------------------------------------------------------------------- fixtures
def load(name: str) -> dict[str, Tensor]:
    with np.load(FIXTURES / name) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def max_diff(ours: Tensor, official: Tensor) -> float:
    """max |ours - official|, relative to the official tensor's scale when that exceeds 1."""
    assert ours.shape == official.shape, f"shape {tuple(ours.shape)} != official {tuple(official.shape)}"
    scale = max(1.0, float(official.float().abs().max()))
    return float((ours.float() - official.float()).abs().max()) / scale


@pytest.fixture(scope="module")
def model_case() -> dict:
    data = load("model.npz")
    official = {key.split("/", 1)[1]: v for key, v in data.items() if key.startswith("weight/")}
    features = data["input/features"]
    model = our_bigrid_model(
        official, features.shape[1], features.shape[2], int(data["config/local_resol"]),
        int(data["config/global_resol"]), int(data["config/layers"]),
    )
    return {"model": model, "features": features, **data}


@pytest.fixture(scope="module")
def loss_case() -> dict:
    data = load("con_loss.npz")
    similarity = data["input/abnormal"][:, 0]
    # the file's block mask is [1, 1, h, w], shared by every image of the batch
    mask = data["input/block_mask"][0, 0].expand_as(similarity) > 0.5
    return {"similarity": similarity, "mask": mask, **data}


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("part", ["normal", "abnormal", "fused", "refined"])
def test_forward_matches_public_file(model_case: dict, part: str) -> None:
    ours = our_reconstruction(model_case["model"], model_case["features"])[part]
    assert max_diff(ours, model_case[f"output/{part}"]) <= TOLERANCE


def test_upsampled_distance_map_matches_public_file(model_case: dict) -> None:
    pred = model_case["output/pred"][:, 0]
    refined = our_reconstruction(model_case["model"], model_case["features"])["refined"]
    ours = our_distance_map(model_case["features"], refined, tuple(pred.shape[-2:]))
    assert max_diff(ours, pred) <= TOLERANCE


def test_contrastive_loss_default_is_the_public_files_rule(loss_case: dict) -> None:
    expected = float(loss_case["output/loss"])
    default = our_contrastive_loss(loss_case["similarity"], loss_case["mask"])
    explicit = our_contrastive_loss(loss_case["similarity"], loss_case["mask"],
                                    normalization="per_image_count")
    assert abs(float(default) - expected) <= TOLERANCE * max(1.0, abs(expected))
    assert float(explicit) == float(default)


def test_contrastive_loss_gradient_matches_public_file(loss_case: dict) -> None:
    similarity = loss_case["similarity"].clone().requires_grad_(True)
    our_contrastive_loss(similarity, loss_case["mask"]).backward()
    assert max_diff(similarity.grad, loss_case["output/grad_channel0"]) <= TOLERANCE


def test_contrastive_loss_without_positives_matches_public_file(loss_case: dict) -> None:
    loss = our_contrastive_loss(loss_case["similarity"], torch.zeros_like(loss_case["mask"]))
    assert abs(float(loss) - float(loss_case["output/loss_empty_mask"])) <= TOLERANCE


def test_per_pixel_mean_is_a_different_rule_on_this_fixture(loss_case: dict) -> None:
    # guards the fixture: it must tell the two normalizations apart
    per_pixel = our_contrastive_loss(loss_case["similarity"], loss_case["mask"],
                                     normalization="per_pixel_mean")
    assert abs(float(per_pixel) - float(loss_case["output/loss"])) > 0.1
