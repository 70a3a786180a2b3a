"""Generated contrastive images on disk: ``<dir>/<category>/level_<n>/<index>.png``.

Files are written one chunk at a time through a temporary name and renamed, so an interrupted
run leaves only complete images; a resumed run counts them and generates only what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def level_dir(root: str | Path, category: str, level: int) -> Path:
    return Path(root) / category / f"level_{level}"


def image_path(directory: Path, index: int) -> Path:
    return directory / f"{index:05d}.png"


def count_complete(directory: Path, wanted: int) -> int:
    """Number of consecutive images 0, 1, ... present (stops at the first gap), at most ``wanted``."""
    n = 0
    while n < wanted and image_path(directory, n).is_file():
        n += 1
    return n


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float [N,3,H,W] -> uint8 [N,3,H,W] (CPU)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_float(images: Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 [N,3,H,W] -> float [-1, 1] on ``device``."""
    return images.to(device).float() / 127.5 - 1.0


def write_images(directory: Path, start: int, images: Tensor) -> None:
    """Save [N,3,H,W] images in [-1, 1] as PNGs numbered from ``start``."""
    directory.mkdir(parents=True, exist_ok=True)
    array = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for offset, pixels in enumerate(array):
        final = image_path(directory, start + offset)
        tmp = final.with_name(f".tmp_{final.name}")
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, final)


def read_images(directory: Path, count: int) -> Tensor:
    """Load images 0..count-1 as uint8 [count,3,H,W]; a clear error when one is missing or sizes differ."""
    arrays = []
    for index in range(count):
        path = image_path(directory, index)
        if not path.is_file():
            raise FileNotFoundError(f"generated image {path} is missing (expected {count} images in {directory})")
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"generated images in {directory} have different sizes: {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
