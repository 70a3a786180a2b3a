"""Feature Block Paste and the alternative anomaly sources (bi-grid GRAD's abnormal-grid training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomaly_bench.models.components.fbp import (
    FeatureBlockPaste,
    GaussianNoiseSource,
    RealAnomalySource,
    build_anomaly_source,
    blur_per_map,
    random_walk,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(5))
def test_wander_walk_is_a_4_neighbour_path_marked_inside_the_canvas(seed: int) -> None:
    radius, steps = 4, 100
    path, canvas = random_walk(radius, steps, boundary="wander", generator=_gen(seed))
    assert path.shape == (steps + 1, 2)
    assert path[0].tolist() == [radius, radius]
    step_lengths = (path[1:] - path[:-1]).abs().sum(dim=1)
    assert torch.all(step_lengths == 1), "every move is one 4-neighbour step"
    side = 2 * radius + 1
    assert canvas.shape == (side, side)
    inside = ((path >= 0) & (path < side)).all(dim=1)
    expected = np.zeros((side, side), dtype=bool)
    expected[path[inside, 0].numpy(), path[inside, 1].numpy()] = True
    np.testing.assert_array_equal(canvas.numpy(), expected)


@pytest.mark.parametrize("seed", range(5))
def test_clamped_walk_is_one_4_connected_blob_inside_the_canvas(seed: int) -> None:
    radius = 3
    path, canvas = random_walk(radius, 60, boundary="clamp", generator=_gen(seed))
    assert ((path >= 0) & (path <= 2 * radius)).all()
    assert ((path[1:] - path[:-1]).abs().sum(dim=1) <= 1).all()
    _, components = ndimage.label(canvas.numpy())  # default structure = 4-connectivity
    assert components == 1
    assert canvas.sum() > 1


def test_eight_neighbour_walk_uses_diagonal_moves() -> None:
    path, _ = random_walk(6, 200, moves=FeatureBlockPaste(neighbourhood=8).moves, generator=_gen(0))
    deltas = path[1:] - path[:-1]
    assert (deltas.abs().max(dim=1).values == 1).all()
    assert ((deltas.abs().sum(dim=1)) == 2).any(), "some diagonal moves expected in 200 steps"


def test_radius_zero_walk_marks_only_the_start() -> None:
    path, canvas = random_walk(0, 100, generator=_gen(1))
    assert canvas.shape == (1, 1) and bool(canvas[0, 0])


@pytest.mark.parametrize("seed", range(8))
def test_paste_without_blur_adds_exactly_the_intensity_on_the_walk(seed: int) -> None:
    height, width = 24, 20
    fbp = FeatureBlockPaste(blur_kernel_size=1)
    features = torch.randn(3, 5, height, width)
    block = fbp.sample_block(height, width, _gen(seed))
    pasted, mask = fbp(features, generator=_gen(seed))
    assert mask.dtype == torch.bool and mask.shape == (3, height, width)
    assert 0 <= block.radius <= 9 and 8.0 <= block.intensity <= 16.0
    row, col = block.centre
    r = block.radius
    assert r <= row <= height - r - 1 and r <= col <= width - r - 1, "canvas lies inside the map"
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    assert rows.min() >= row - r and rows.max() <= row + r and cols.min() >= col - r and cols.max() <= col + r
    expected_mask = torch.zeros(height, width, dtype=torch.bool)
    expected_mask[row - r : row + r + 1, col - r : col + r + 1] = block.canvas
    assert torch.equal(mask[0], expected_mask)
    delta = pasted - features
    assert torch.allclose(delta[:, :, mask[0]], torch.full_like(delta[:, :, mask[0]], block.intensity))
    assert torch.all(delta[:, :, ~mask[0]] == 0)
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2]), "one block per batch"


def _reference_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    taps = np.array([math.exp(-0.5 * (x / sigma) ** 2) for x in (-1.0, 0.0, 1.0)])
    taps /= taps.sum()
    kernel = np.outer(taps, taps)
    padded = np.pad(image, 1, mode="reflect")
    out = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_paste_is_the_gaussian_blurred_walk_and_mask_is_the_unblurred_walk(seed: int) -> None:
    height = width = 32
    fbp = FeatureBlockPaste()  # official: 3x3 kernel, sigma 0.8
    features = torch.randn(2, 4, height, width, dtype=torch.float64)
    block = fbp.sample_block(height, width, _gen(seed))
    pasted, mask = fbp(features, generator=_gen(seed))
    paste, walk = FeatureBlockPaste.render([block], height, width)
    assert torch.equal(mask[0], walk[0]), "label mask is the un-blurred walk"
    expected = _reference_blur(paste[0, 0].double().numpy(), sigma=0.8)
    for b in range(2):
        for c in range(4):
            np.testing.assert_allclose((pasted - features)[b, c].numpy(), expected, atol=1e-5)
    halo = (np.abs(expected) > 1e-6) & ~mask[0].numpy()
    assert halo.any(), "the blur spreads intensity outside the walk, which stays labelled normal"


def test_single_cell_blur_matches_hand_computed_weights() -> None:
    w_mid = 1 / (1 + 2 * math.exp(-0.5 / 0.64))
    w_side = math.exp(-0.5 / 0.64) * w_mid
    paste = torch.zeros(1, 1, 9, 9)
    paste[0, 0, 4, 4] = 10.0
    paste[0, 0, 0, 6] = 10.0  # on the border: reflect padding folds the outer tap back in
    out = blur_per_map(paste, 3, torch.tensor([0.8]))[0, 0]
    assert out[4, 4].item() == pytest.approx(10 * w_mid * w_mid, rel=1e-5)
    assert out[3, 5].item() == pytest.approx(10 * w_side * w_side, rel=1e-5)
    assert out[4, 5].item() == pytest.approx(10 * w_mid * w_side, rel=1e-5)
    assert out[1, 6].item() == pytest.approx(10 * w_side * w_mid, rel=1e-5)
    assert out[0, 6].item() == pytest.approx(10 * w_mid * w_mid, rel=1e-5)
    assert out[2:7, 2:7].sum().item() == pytest.approx(10.0, rel=1e-5)
    assert torch.equal(blur_per_map(paste, 3, torch.tensor([0.0])), paste), "sigma 0 = no blur"


def test_per_image_switch_gives_each_image_its_own_block() -> None:
    fbp = FeatureBlockPaste(per_image=True)
    _, mask = fbp(torch.zeros(6, 2, 32, 32), generator=_gen(0))
    assert mask.shape == (6, 32, 32)
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1


def test_paper_walk_length_is_between_b_and_2b() -> None:
    fbp = FeatureBlockPaste(walk_steps=None, neighbourhood=8)
    for seed in range(20):
        block = fbp.sample_block(32, 32, _gen(seed))
        assert block.radius <= len(block.path) - 1 <= 2 * block.radius


def test_radius_is_clipped_to_fit_small_maps() -> None:
    fbp = FeatureBlockPaste(radius_range=(20.0, 30.0))
    block = fbp.sample_block(5, 7, _gen(0))
    assert block.radius == 2
    _, mask = fbp(torch.zeros(1, 1, 5, 7), generator=_gen(0))
    assert mask.any()


def test_invalid_fbp_arguments_are_rejected_with_the_argument_name() -> None:
    with pytest.raises(ValueError, match="neighbourhood"):
        FeatureBlockPaste(neighbourhood=6)
    with pytest.raises(ValueError, match="blur_kernel_size"):
        FeatureBlockPaste(blur_kernel_size=4)
    with pytest.raises(ValueError, match="boundary"):
        FeatureBlockPaste(boundary="wrap")


def test_gaussian_noise_source_perturbs_exactly_the_masked_positions() -> None:
    features = torch.randn(4, 8, 16, 16)
    noisy, mask = GaussianNoiseSource(std=1.0, probability=0.5)(features, generator=_gen(0))
    changed = (noisy != features).any(dim=1)
    assert torch.equal(changed, mask)
    assert 0.35 < mask.float().mean().item() < 0.65
    assert (noisy - features).permute(0, 2, 3, 1)[mask].std().item() == pytest.approx(1.0, rel=0.1)


def test_real_anomaly_source_downsamples_ground_truth_and_keeps_features() -> None:
    features = torch.randn(2, 3, 8, 8)
    gt = torch.zeros(2, 64, 64)
    gt[0, 16:24, 40:48] = 1.0  # exactly feature cell (2, 5)
    gt[1, 0, 0] = 1.0  # one pixel: still marks cell (0, 0) with the default "any pixel" rule
    out, mask = RealAnomalySource()(features, gt)
    assert out is features
    assert mask[0].nonzero().tolist() == [[2, 5]]
    assert mask[1].nonzero().tolist() == [[0, 0]]
    _, strict = RealAnomalySource(min_fraction=0.5)(features, gt)
    assert strict[0].nonzero().tolist() == [[2, 5]] and not strict[1].any()
    with pytest.raises(ValueError, match="ground-truth mask"):
        RealAnomalySource()(features, None)


def test_build_anomaly_source_by_name() -> None:
    assert isinstance(build_anomaly_source("fbp", {"per_image": True}), FeatureBlockPaste)
    assert isinstance(build_anomaly_source("gaussian_noise"), GaussianNoiseSource)
    with pytest.raises(ValueError, match="unknown anomaly_source"):
        build_anomaly_source("perlin")
    with pytest.raises(ValueError, match="anomaly_source_options"):
        build_anomaly_source("fbp", {"size": 3})
