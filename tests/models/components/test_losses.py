"""Truncated L1 (bi-grid GRAD's abnormal-grid loss) on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from anomaly_bench.models.components.losses import truncated_l1_loss


def test_known_answer_symmetric_margin() -> None:
    d = torch.tensor([[[1.0, 0.2], [-1.0, 0.1]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    # positives: max(0, .5-1)=0, max(0, .5-.2)=.3 -> .15 ; negatives: max(0,.5-1)=0, max(0,.5+.1)=.6 -> .3
    assert truncated_l1_loss(d, mask).item() == pytest.approx(0.45)


def test_known_answer_paper_margin_has_no_buffer() -> None:
    d = torch.tensor([[[1.0, 0.2], [-1.0, 0.7]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    # positives as above: .15 ; negatives max(0, d-.5): 0 and .2 -> .1
    assert truncated_l1_loss(d, mask, negative_margin="paper").item() == pytest.approx(0.25)
    # a negative inside the buffer (0.3) costs nothing with the paper margin but does with the symmetric one
    d2 = torch.tensor([[[0.6, 0.7], [0.3, -0.6]]])
    assert truncated_l1_loss(d2, mask, negative_margin="paper").item() == pytest.approx(0.0)
    assert truncated_l1_loss(d2, mask).item() == pytest.approx(0.4)


def test_per_pixel_mean_normalizes_each_term_by_its_own_pixel_count() -> None:
    d = torch.zeros(2, 4, 4)  # every pixel sits in the buffer: each hinge costs 0.5
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True  # 1 positive, 31 negatives
    assert truncated_l1_loss(d, mask, normalization="per_pixel_mean").item() == pytest.approx(1.0)


def test_per_image_count_is_the_default_and_divides_batch_sums_by_one_images_count() -> None:
    # The public GRAD file: one FBP mask shared by the B images; sum(pos) / n + sum(neg) / (B*h*w - n).
    d = torch.tensor([[[0.1, 0.9], [-0.7, 0.0]], [[-0.2, 0.4], [0.3, -0.5]], [[0.5, 0.2], [-0.6, 0.2]]])
    shared = torch.tensor([[True, True], [False, False]])
    mask = shared.expand(3, 2, 2)
    # positives (n = 2 per image): .4 + 0 + .7 + .1 + 0 + .3 = 1.5 -> 1.5 / 2
    # negatives (B*h*w - n = 10): 0 + .5 + .8 + 0 + 0 + .7 = 2.0 -> 2.0 / 10
    expected = 1.5 / 2 + 2.0 / 10
    assert truncated_l1_loss(d, mask).item() == pytest.approx(expected)
    assert truncated_l1_loss(d, mask, normalization="per_image_count").item() == pytest.approx(expected)
    # the per-pixel mean divides the same sums by 6 positives and 6 negatives
    per_pixel = truncated_l1_loss(d, mask, normalization="per_pixel_mean")
    assert per_pixel.item() == pytest.approx(1.5 / 6 + 2.0 / 6)


def test_per_image_count_weighs_a_shared_masks_positives_batch_size_times_more() -> None:
    batch = 4
    d = torch.zeros(batch, 4, 4)  # every hinge costs 0.5
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:3, 1:3] = True
    mask = mask.expand(batch, 4, 4)
    only_positive_sum = torch.where(mask, d, torch.full_like(d, -1.0))  # negatives cost nothing
    per_image = truncated_l1_loss(only_positive_sum, mask, normalization="per_image_count")
    per_pixel = truncated_l1_loss(only_positive_sum, mask, normalization="per_pixel_mean")
    assert per_pixel.item() == pytest.approx(0.5)
    assert per_image.item() == pytest.approx(batch * 0.5)


def test_per_image_count_gradients_follow_the_two_denominators() -> None:
    d = torch.zeros(2, 2, 2, requires_grad=True)
    mask = torch.tensor([[True, False], [False, False]]).expand(2, 2, 2)
    truncated_l1_loss(d, mask).backward()
    # positives: -1 / n with n = 1; negatives: +1 / (B*h*w - n) = 1 / 7
    assert d.grad[0, 0, 0].item() == pytest.approx(-1.0)
    assert d.grad[1, 0, 0].item() == pytest.approx(-1.0)
    assert d.grad[0, 1, 1].item() == pytest.approx(1.0 / 7)


def test_per_image_count_without_positives_divides_negatives_by_every_pixel() -> None:
    d = torch.full((2, 2, 2), 0.5)  # each negative hinge costs 1.0
    loss = truncated_l1_loss(d, torch.zeros(2, 2, 2, dtype=torch.bool), normalization="per_image_count")
    assert loss.item() == pytest.approx(1.0)
    assert torch.isfinite(loss)


def test_perfectly_separated_scores_cost_nothing_and_float_masks_work() -> None:
    mask = torch.zeros(1, 3, 3)
    mask[0, 1, 1] = 1.0
    d = torch.where(mask > 0.5, torch.tensor(0.9), torch.tensor(-0.7))
    assert truncated_l1_loss(d, mask).item() == 0.0


def test_empty_positive_set_trains_only_negatives() -> None:
    d = torch.full((1, 2, 2), 0.5)
    assert truncated_l1_loss(d, torch.zeros(1, 2, 2, dtype=torch.bool)).item() == pytest.approx(1.0)


def test_gradient_pushes_positives_up_and_negatives_down() -> None:
    d = torch.zeros(1, 1, 2, requires_grad=True)
    truncated_l1_loss(d, torch.tensor([[[True, False]]])).backward()
    assert d.grad[0, 0, 0] < 0 < d.grad[0, 0, 1]


def test_shape_mismatch_and_bad_margin_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        truncated_l1_loss(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="negative_margin"):
        truncated_l1_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), negative_margin="hinge")
    with pytest.raises(ValueError, match="normalization must be one of"):
        truncated_l1_loss(
            torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), normalization="mean"  # type: ignore[arg-type]
        )
