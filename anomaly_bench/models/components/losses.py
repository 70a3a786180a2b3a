"""Losses shared by the grid methods.

``truncated_l1_loss`` is bi-grid GRAD's abnormal-grid objective (paper Eq. 4). The per-pixel
"similarity" d is channel 0 of the abnormal branch's output (the public GRAD model file).
Anomalous pixels are pushed to d >= th and normal pixels to d <= -th, which leaves the symmetric
buffer (-th, th) the paper describes; the paper's printed negative term max(0, d - th) (no buffer)
is available as ``negative_margin="paper"``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

NEGATIVE_MARGINS = ("symmetric", "paper")
TruncatedL1Normalization = Literal["per_image_count", "per_pixel_mean"]
NORMALIZATIONS: tuple[str, ...] = get_args(TruncatedL1Normalization)


def truncated_l1_loss(
    similarity: Tensor,
    anomaly_mask: Tensor,
    threshold: float = 0.5,
    negative_margin: str = "symmetric",
    normalization: TruncatedL1Normalization = "per_image_count",
) -> Tensor:
    """Hinge loss separating anomalous (D+) from normal (D-) positions of a batch.

    L = sum_{D+} max(0, th - d) / N+  +  sum_{D-} max(0, th + d) / N-, sums over the whole batch.

    Args:
        similarity: d, float ``[B, h, w]``.
        anomaly_mask: ``[B, h, w]`` bool (or float, > 0.5 = anomalous): D+ where True, D- elsewhere.
        threshold: th (paper: 0.5).
        negative_margin: ``"symmetric"`` (official code: max(0, th + d)) or ``"paper"`` (max(0, d - th)).
        normalization: what the two sums are divided by.
            ``"per_image_count"`` (default; the public GRAD model file's ``compute_con_loss``): its FBP
            pastes one block shared by the B images, and it divides the batch's positive sum by that
            one mask's count n and the negative sum by B*h*w - n. Here n is the batch's positive count
            / B, which is that count when the mask is shared. Positives then weigh about B times more
            than negatives per pixel; this is what the public code trained with.
            ``"per_pixel_mean"``: each sum divided by its own pixel count over the batch (the
            paper's Len(D+), Len(D-) read literally; each term is a mean over its pixels).

    An empty D+ or D- contributes 0 (a batch without anomalies only trains the negative side).
    """
    if similarity.shape != anomaly_mask.shape:
        raise ValueError(
            f"truncated_l1_loss: similarity {tuple(similarity.shape)} and anomaly_mask "
            f"{tuple(anomaly_mask.shape)} must have the same shape"
        )
    if negative_margin not in NEGATIVE_MARGINS:
        raise ValueError(
            f"truncated_l1_loss negative_margin must be one of {NEGATIVE_MARGINS}, got {negative_margin!r}"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"truncated_l1_loss normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
        )
    positive = anomaly_mask > 0.5 if anomaly_mask.dtype != torch.bool else anomaly_mask
    negative = ~positive
    pos_hinge = torch.relu(threshold - similarity)
    if negative_margin == "symmetric":
        neg_hinge = torch.relu(threshold + similarity)
    else:
        neg_hinge = torch.relu(similarity - threshold)
    pos_sum = (pos_hinge * positive).sum()
    neg_sum = (neg_hinge * negative).sum()
    positives = positive.sum().to(pos_sum.dtype)
    if normalization == "per_image_count":
        batch = similarity.shape[0]
        per_image = positives / batch
        # A non-empty D+ has per_image >= 1/B, so the clamps only act when a sum is 0 anyway.
        pos_count = per_image.clamp_min(1.0 / batch)
        neg_count = (similarity.numel() - per_image).clamp_min(1.0)
    else:
        pos_count = positives.clamp_min(1.0)
        neg_count = negative.sum().to(neg_sum.dtype).clamp_min(1.0)
    return pos_sum / pos_count + neg_sum / neg_count
