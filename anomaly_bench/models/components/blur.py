"""Gaussian blur of score maps and masks: one implementation for every method.

Scores are blurred in float32 with autocast off: rounding blurred maps to bf16/fp16 creates ties
that change the ranking metrics. Padding is reflect (torchvision's and kornia's default), falling
back to replicate when a map is smaller than the kernel radius.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel_size(sigma: float, truncate: float = 4.0) -> int:
    """Odd kernel size covering ``truncate`` standard deviations each side: 2·⌈truncate·σ⌉ + 1."""
    return 2 * math.ceil(truncate * sigma) + 1


def gaussian_kernel1d(sigma: float, kernel_size: int | None = None, truncate: float = 4.0) -> Tensor:
    """Normalised 1-D Gaussian taps centred on the middle tap (float32)."""
    size = kernel_size if kernel_size is not None else gaussian_kernel_size(sigma, truncate)
    if size % 2 == 0 or size < 1:
        raise ValueError(f"Gaussian kernel size must be a positive odd number, got {size}")
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, sigma: float, kernel_size: int | None = None, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps; ``sigma <= 0`` or a 1-tap kernel is a no-op.

    Returns float32 maps (the input dtype is not kept: see the module docstring).
    """
    if sigma <= 0 or kernel_size == 1:
        return maps
    kernel = gaussian_kernel1d(sigma, kernel_size, truncate).to(maps.device)
    pad = kernel.numel() // 2
    x = maps.float()[:, None]
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    with torch.autocast(device_type=maps.device.type, enabled=False):
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode=mode), kernel.view(1, 1, -1, 1))
    return x[:, 0]
