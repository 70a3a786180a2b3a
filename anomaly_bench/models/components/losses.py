"""Losses shared by the grid methods.

``truncated_l1_loss`` is bi-grid GRAD's abnormal-grid objective (paper Eq. 4). The per-pixel
"similarity" d is channel 0 of the abnormal branch's output (official code, methods.md §2.4).
Anomalous pixels are pushed to d >= th and normal pixels to d <= -th, which leaves the symmetric
buffer (-th, th) the paper describes; the paper's printed negative term max(0, d - th) (no buffer)
is available as ``negative_margin="paper"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEGATIVE_MARGINS = ("symmetric", "paper")


def truncated_l1_loss(
    similarity: Tensor,
    anomaly_mask: Tensor,
    threshold: float = 0.5,
    negative_margin: str = "symmetric",
) -> Tensor:
    """Hinge loss separating anomalous from normal positions, each side averaged over its own pixels.

    L = sum_{D+} max(0, th - d) / |D+|  +  sum_{D-} max(0, th + d) / |D-|

    Args:
        similarity: d, float ``[B, h, w]``.
        anomaly_mask: ``[B, h, w]`` bool (or float, > 0.5 = anomalous): D+ where True, D- elsewhere.
        threshold: th (paper: 0.5).
        negative_margin: ``"symmetric"`` (official code: max(0, th + d)) or ``"paper"`` (max(0, d - th)).

    An empty D+ or D- contributes 0 (a batch without anomalies only trains the negative side).
    Counts run over the whole batch; the official code divides the positive sum by one image's
    mask count although every image carries the mask, i.e. weights positives B times more.
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
    positive = anomaly_mask > 0.5 if anomaly_mask.dtype != torch.bool else anomaly_mask
    negative = ~positive
    pos_hinge = torch.relu(threshold - similarity)
    if negative_margin == "symmetric":
        neg_hinge = torch.relu(threshold + similarity)
    else:
        neg_hinge = torch.relu(similarity - threshold)
    pos_count = positive.sum().clamp_min(1)
    neg_count = negative.sum().clamp_min(1)
    pos_term = (pos_hinge * positive).sum() / pos_count
    neg_term = (neg_hinge * negative).sum() / neg_count
    return pos_term + neg_term
