"""Known answers for CRAD's feature refinement and the official score filters."""

from __future__ import annotations

import pytest
import torch

from anomaly_bench.models.components.refinement import (
    box_blur,
    box_pooled_max,
    distance_map_and_score,
    feature_distance,
    refine_features,
    refinement_similarity,
    scaled_kernel,
)


def pixels(*vectors):
    """Stack C-dim vectors as pixels of a [1, C, 1, N] map."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, len(vectors[0]), 1, len(vectors))


def test_refinement_formula_hand_computed():
    x = pixels((1.0, 0.0), (1.0, 0.0), (1.0, 1.0), (1.0, 1.0))
    f = pixels((0.0, 1.0), (10.0, 0.0), (5.0, 3.0), (5.0, 3.5))
    # mse: 1 (<=10, cos 0) | 40.5 (>10, cos 1) | exactly 10 (counts as <= k) | 11.125 (> k)
    s = refinement_similarity(x, f)[0, 0, 0]
    cos3 = (5 + 3) / (2**0.5 * 34**0.5)
    cos4 = (5 + 3.5) / (2**0.5 * (25 + 12.25) ** 0.5)
    torch.testing.assert_close(s, torch.tensor([0.3, 0.7, 0.3 + 0.7 * cos3, 0.7 * cos4]))
    x_hat, s_full = refine_features(x, f)
    torch.testing.assert_close(x_hat[0, :, 0, 0], torch.tensor([0.3, 0.7]))  # 0.3 x + 0.7 f
    torch.testing.assert_close(x_hat[0, :, 0, 1], torch.tensor([3.7, 0.0]))  # 0.7 x + 0.3 f
    torch.testing.assert_close(x_hat, s_full * x + (1 - s_full) * f)


def test_refinement_can_go_negative_and_weights_switch_terms():
    x, f = pixels((1.0, 0.0)), pixels((-1.0, 0.0))  # mse 2, cos -1
    assert refinement_similarity(x, f).item() == pytest.approx(0.3 - 0.7)
    assert refinement_similarity(x, f, mse_weight=1.0, cos_weight=0.0).item() == pytest.approx(1.0)
    assert refinement_similarity(x, f, mse_weight=0.0, cos_weight=1.0).item() == pytest.approx(-1.0)


def test_refinement_gradient_flows_through_cosine_only():
    x = torch.randn(1, 4, 2, 2)
    f = torch.randn(1, 4, 2, 2, requires_grad=True)
    refinement_similarity(x, f, mse_weight=1.0, cos_weight=0.0).sum().backward()
    assert f.grad is None or f.grad.abs().sum() == 0  # the indicator has no gradient
    refinement_similarity(x, f).sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_feature_distance_is_channel_l2():
    x = pixels((3.0, 4.0))
    assert feature_distance(x, torch.zeros_like(x)).item() == pytest.approx(5.0)


def test_box_filters_known_answers():
    ones = torch.ones(1, 5, 5)
    blurred = box_blur(ones, 3)
    assert blurred[0, 2, 2].item() == pytest.approx(1.0)
    assert blurred[0, 0, 0].item() == pytest.approx(4 / 9)  # zero padding counted in the mean
    assert blurred[0, 0, 2].item() == pytest.approx(6 / 9)
    peak = torch.zeros(1, 6, 6)
    peak[0, 1, 1] = 4.0
    assert box_pooled_max(peak, 2).item() == pytest.approx(1.0)
    assert box_pooled_max(peak, 100).item() == pytest.approx(4.0 / 36)  # kernel capped at map size
    with pytest.raises(ValueError, match="odd"):
        box_blur(ones, 4)


def test_scaled_kernels_and_distance_map_and_score():
    assert scaled_kernel(21, 224, odd=True) == 21 and scaled_kernel(32, 224) == 32
    assert scaled_kernel(21, 64, odd=True) == 7 and scaled_kernel(32, 64) == 9
    distance = torch.zeros(2, 4, 4)
    distance[1, 1, 2] = 10.0
    amap, score = distance_map_and_score(distance, (32, 32))
    assert amap.shape == (2, 32, 32)
    assert score[0].item() == 0.0 and score[1].item() > 0.0
    _, plain = distance_map_and_score(distance, (31, 31), image_score="max", blur_anomaly_map=False)  # cell 2 -> pixel 20
    assert plain[1].item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="image_score"):
        distance_map_and_score(distance, (32, 32), image_score="median")
