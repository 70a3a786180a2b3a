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


def test_each_term_is_normalised_by_its_own_pixel_count() -> None:
    d = torch.zeros(2, 4, 4)  # every pixel sits in the buffer: each hinge costs 0.5
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True  # 1 positive, 31 negatives
    assert truncated_l1_loss(d, mask).item() == pytest.approx(1.0)


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
