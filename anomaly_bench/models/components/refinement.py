"""Feature refinement and feature-distance scoring shared by CRAD and bi-grid GRAD.

Refinement (CRAD Eq. 5-6): where the normal representation f_n already agrees with the input x,
pull the output back to x so normal regions do not light up (fewer false positives):

    m_hw = mean_c (f_n - x)^2,   c_hw = cos_c(f_n, x),
    S_hw = w_mse * 1[m_hw <= k] + w_cos * c_hw,        (official: 0.3, 0.7, k = 10)
    x_hat = S * x + (1 - S) * f_n.

The official code builds the indicator by clamp-then-round of 0.05 * m, which is 1[m <= 10] with a
zero gradient (round-half-to-even sends 0.5 to 0); the paper writes "< k", which only differs at
equality. S may be negative (cos in [-1, 1]) and is not clamped. Gradients flow through the cosine.

Scoring (official evaluation): d_hw = ||x - x_hat||_2 over channels at feature resolution,
upsampled bilinearly (align_corners=True) to the input size, blurred with a 21x21 box filter
(zero padding counted in the mean) for the pixel map, and the image score is the max after a
further 32x32 box filter without padding. Kernel sizes are for 224 px and scale with resolution.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

OFFICIAL_BLUR_KERNEL_224 = 21
OFFICIAL_POOL_KERNEL_224 = 32
OFFICIAL_IMAGE_SIZE = 224


def refinement_similarity(
    x: Tensor, f_n: Tensor, mse_weight: float = 0.3, cos_weight: float = 0.7, mse_threshold: float = 10.0
) -> Tensor:
    """S [B, 1, H, W] from input features x and normal representation f_n (both [B, C, H, W])."""
    x32, f32 = x.float(), f_n.float()
    mse = (f32 - x32).pow(2).mean(dim=1, keepdim=True)
    indicator = (mse <= mse_threshold).to(x32.dtype)  # no gradient, like clamp-then-round
    cos = F.cosine_similarity(f32, x32, dim=1, eps=1e-8).unsqueeze(1)
    return mse_weight * indicator + cos_weight * cos


def refine_features(
    x: Tensor, f_n: Tensor, mse_weight: float = 0.3, cos_weight: float = 0.7, mse_threshold: float = 10.0
) -> tuple[Tensor, Tensor]:
    """x_hat = S * x + (1 - S) * f_n. Returns (x_hat [B, C, H, W] float32, S [B, 1, H, W])."""
    if x.shape != f_n.shape:
        raise ValueError(f"refine_features: x {tuple(x.shape)} and f_n {tuple(f_n.shape)} must match")
    s = refinement_similarity(x, f_n, mse_weight, cos_weight, mse_threshold)
    return s * x.float() + (1.0 - s) * f_n.float(), s


def feature_distance(x: Tensor, x_hat: Tensor) -> Tensor:
    """d_hw = ||x_hw - x_hat_hw||_2 over channels: [B, C, H, W] x2 -> [B, H, W] (float32)."""
    return torch.linalg.vector_norm(x.float() - x_hat.float(), ord=2, dim=1)


def upsample_map(score_map: Tensor, size: tuple[int, int], align_corners: bool = True) -> Tensor:
    """[B, h, w] -> [B, H, W] bilinear (official: align_corners=True)."""
    if tuple(score_map.shape[-2:]) == tuple(size):
        return score_map
    return F.interpolate(score_map.unsqueeze(1), size=size, mode="bilinear", align_corners=align_corners).squeeze(1)


def scaled_kernel(kernel_at_224: int, image_size: int, odd: bool = False) -> int:
    """Scale an official 224-px kernel size to ``image_size`` (>= 1; odd when a centred,
    size-preserving filter is needed)."""
    k = max(1, int(round(kernel_at_224 * image_size / OFFICIAL_IMAGE_SIZE)))
    if odd and k % 2 == 0:
        k += 1
    return k


def box_blur(score_map: Tensor, kernel: int) -> Tensor:
    """Size-preserving box filter with zero padding counted in the mean (borders attenuate, as in
    the official code). ``kernel`` must be odd. [B, H, W] -> [B, H, W]."""
    if kernel <= 1:
        return score_map
    if kernel % 2 == 0:
        raise ValueError(f"box_blur needs an odd kernel to keep the map size, got {kernel}")
    return F.avg_pool2d(score_map.unsqueeze(1), kernel, stride=1, padding=kernel // 2, count_include_pad=True).squeeze(1)


def box_pooled_max(score_map: Tensor, kernel: int) -> Tensor:
    """Image score: max over the map after a ``kernel`` x ``kernel`` box filter, stride 1, no
    padding (kernel capped at the map size). [B, H, W] -> [B]."""
    k = max(1, min(int(kernel), score_map.shape[-2], score_map.shape[-1]))
    pooled = F.avg_pool2d(score_map.unsqueeze(1), k, stride=1, padding=0) if k > 1 else score_map.unsqueeze(1)
    return pooled.flatten(1).amax(dim=1)


DistanceImageScore = Literal["blur_pool_max", "max", "pool_max"]
DISTANCE_IMAGE_SCORES = ("blur_pool_max", "max", "pool_max")


def distance_map_and_score(
    distance: Tensor,
    image_size: tuple[int, int],
    blur_kernel: int | None = None,
    pool_kernel: int | None = None,
    blur_anomaly_map: bool = True,
    image_score: DistanceImageScore = "blur_pool_max",
) -> tuple[Tensor, Tensor]:
    """From the feature-resolution distance [B, h, w] to (anomaly_map [B, H, W], pred_score [B]).

    Args:
        distance: ``||x - x_hat||`` per feature position, [B, h, w].
        image_size: (H, W) of the input images; the map is upsampled to it.
        blur_kernel: box-blur width of the pixel map; None = the official 21 scaled by min(H, W) / 224.
        pool_kernel: box-pool width before the image max; None = the official 32, scaled likewise.
        blur_anomaly_map: return the box-blurred map as the pixel map (official) instead of the plain one.
        image_score: ``blur_pool_max`` (official CRAD/GRAD evaluation: max after the blur and then
            the pool), ``max`` (plain max of the upsampled map) or ``pool_max`` (max after the pool
            only: the paper's "max of the average-pooled d").
    """
    if image_score not in DISTANCE_IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {DISTANCE_IMAGE_SCORES}, got {image_score!r}")
    size = min(image_size)
    blur_k = blur_kernel if blur_kernel is not None else scaled_kernel(OFFICIAL_BLUR_KERNEL_224, size, odd=True)
    pool_k = pool_kernel if pool_kernel is not None else scaled_kernel(OFFICIAL_POOL_KERNEL_224, size)
    up = upsample_map(distance.float(), image_size)
    blurred = box_blur(up, blur_k)
    if image_score == "blur_pool_max":
        score = box_pooled_max(blurred, pool_k)
    elif image_score == "max":
        score = up.flatten(1).amax(dim=1)
    else:
        score = box_pooled_max(up, pool_k)
    return (blurred if blur_anomaly_map else up), score
