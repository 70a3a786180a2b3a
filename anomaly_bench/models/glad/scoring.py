"""GLAD's anomaly map and score: global nearest-neighbour token distances, blur, top-k mean.

Pure tensor functions (no model), so each step can be checked on hand-made inputs.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.components.blur import gaussian_blur, gaussian_kernel1d  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off: distances and blurs must not be rounded to bf16/fp16 (scores would tie)."""
    return torch.autocast(device_type=device.type, enabled=False)


def nn_distance(query: Tensor, keys: Tensor, chunk: int = 2048) -> Tensor:
    """For each query token, min over *all* key tokens of (1 − cos): [B, N, C], [B, M, C] -> [B, N].

    A global nearest-neighbour search, not a same-position comparison: a normal patch that the
    reconstruction moved a little still finds its match. Computed in float32, in query chunks so
    4 096 x 4 096 similarity matrices (512 px, patch 8) stay bounded.
    """
    if query.ndim != 3 or keys.ndim != 3 or query.shape[0] != keys.shape[0] or query.shape[2] != keys.shape[2]:
        raise ValueError(f"nn_distance expects [B, N, C] and [B, M, C], got {tuple(query.shape)}, {tuple(keys.shape)}")
    with full_precision(query.device):
        q = F.normalize(query.float(), dim=-1)
        k = F.normalize(keys.float(), dim=-1).transpose(1, 2)
        parts = [1 - torch.bmm(q[:, i : i + chunk], k).amax(dim=-1) for i in range(0, q.shape[1], chunk)]
        return torch.cat(parts, dim=1)


def topk_mean(values: Tensor, k: int) -> Tensor:
    """Mean of the k largest values per sample ([B, ...] -> [B]); k is capped at the element count."""
    flat = values.reshape(values.shape[0], -1)
    k = max(1, min(int(k), flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def tokens_to_map(distances: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """[B, h·w] token distances -> [B, H, W], bilinear with align_corners=True (official)."""
    maps = distances.float().reshape(-1, 1, *grid)
    with full_precision(maps.device):
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[:, 0]


def layer_distance_map(
    input_tokens: list[Tensor],
    recon_tokens: list[Tensor],
    grid: tuple[int, int],
    size: tuple[int, int],
    bidirectional: Tensor | None = None,
) -> Tensor:
    """Σ over layers of the upsampled nearest-neighbour maps; optional reverse direction per image.

    ``bidirectional`` [B] bool: also add, for each reconstruction token, its distance to the nearest
    input token (the official code does this for transistor, pcb1 and pcb4).
    """
    total = torch.zeros(input_tokens[0].shape[0], *size, device=input_tokens[0].device)
    for f_in, f_rec in zip(input_tokens, recon_tokens):
        total = total + tokens_to_map(nn_distance(f_in, f_rec), grid, size)
        if bidirectional is not None and bool(bidirectional.any()):
            reverse = tokens_to_map(nn_distance(f_rec, f_in), grid, size)
            total = total + reverse * bidirectional.to(total.dtype).view(-1, 1, 1)
    return total


def pixel_l1_term(input_images: Tensor, recon_images: Tensor, maps: Tensor, weights: Tensor) -> Tensor:
    """v · max(map)/max(D) · D with D the channel-mean |input − recon|, per image.

    The official code takes both maxima over the whole batch tensor, which makes a score depend on
    which images share its batch; we take them per image (README: deviations).
    """
    diff = (input_images.float() - recon_images.float()).abs().mean(dim=1)
    diff = F.interpolate(diff[:, None], size=maps.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
    map_max = maps.flatten(1).amax(1).view(-1, 1, 1)
    diff_max = diff.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return weights.to(maps.dtype).view(-1, 1, 1) * map_max / diff_max * diff


def smooth_object_mask(foreground: Tensor, sigma: float) -> Tensor:
    """Official object-mask post-processing: blur, set to 1 where > 0, blur again ([B, H, W])."""
    blurred = gaussian_blur(foreground.float(), sigma)
    return gaussian_blur((blurred > 1e-6).float(), sigma)


def imagenet_normalize(images_minus_one_one: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] -> ImageNet mean/std (what DINO saw in training)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images_minus_one_one.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images_minus_one_one.device).view(1, 3, 1, 1)
    return ((images_minus_one_one.float() + 1) / 2 - mean) / std


def grid_shape(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    """Token grid (h, w) for ``num_tokens`` patch tokens of an H x W image."""
    ratio = width / height
    h = int(round(math.sqrt(num_tokens / ratio)))
    w = num_tokens // max(h, 1)
    if h * w != num_tokens:
        raise ValueError(f"cannot arrange {num_tokens} tokens in a grid for a {height}x{width} image")
    return h, w
