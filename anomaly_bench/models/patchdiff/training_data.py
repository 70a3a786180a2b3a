"""The images PatchDiff GRAD trains on, held by the model itself (uint8, CPU) between steps.

The method draws its own groups of images (4 normal + 4 per PatchDiff level per detector step),
augments them per category and resizes them per detector, so the training dataloader is read
only once, at the start of ``fit``, into a bank of normal images per category.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from anomaly_bench.models.components.blur import gaussian_blur
from anomaly_bench.models.patchdiff import storage
from anomaly_bench.models.patchdiff.patches import AugmentationSpec, augment
from anomaly_bench.models.patchdiff.torch_model import resize
from anomaly_bench.types import LABEL_NORMAL, Batch

# images resized per call when preparing a detector's data: bounds the float copy
# (64 x 3 x 256 x 256 x 4 bytes = 50 MB at the paper's size) whatever the number of images
RESIZE_CHUNK = 64
# the finest detail band is the image minus its Gaussian blur of this sigma (pixels at the detector's
# input): the band an under-trained PatchDiff or a few-step sampler loses first
DETAIL_SIGMA = 1.0


@torch.no_grad()
def collect_normal_images(batches: Iterable[Batch], categories: list[str]) -> dict[str, Tensor]:
    """The normal training images of every category, uint8 [N, 3, H, W] on the CPU."""
    per_category: dict[str, list[Tensor]] = {c: [] for c in categories}
    for batch in batches:
        if not isinstance(batch, Batch):
            raise TypeError(f"PatchDiffGRAD expects anomaly_bench.types.Batch from the dataloader, got {type(batch)}")
        for image, label, category in zip(batch.image, batch.label, batch.category):
            if int(label) != LABEL_NORMAL:
                continue
            if category not in per_category:
                raise KeyError(f"training image of category {category!r}, but the model was built for {categories}")
            per_category[category].append(storage.to_uint8(image[None])[0])
    missing = [c for c, images in per_category.items() if not images]
    if missing:
        raise ValueError(f"no normal training images for categories {missing}")
    return {c: torch.stack(images) for c, images in per_category.items()}


def resized_uint8(images: Tensor, size: int, device: torch.device) -> Tensor:
    """uint8 images [N, 3, H, W] resized to size x size (uint8, CPU), ``RESIZE_CHUNK`` at a time."""
    chunks = [storage.to_uint8(resize(storage.to_float(images[i:i + RESIZE_CHUNK], device), size))
              for i in range(0, images.shape[0], RESIZE_CHUNK)]
    return torch.cat(chunks)


def detail_band(images: Tensor) -> tuple[Tensor, Tensor]:
    """(smooth part, finest detail band) of float images [N, 3, H, W]: images = smooth + detail."""
    smooth = gaussian_blur(images.float().flatten(0, 1), DETAIL_SIGMA).view(images.shape)
    return smooth, images.float() - smooth


def detail_energy(images: Tensor, device: torch.device) -> Tensor:
    """Mean magnitude of the finest detail band of each uint8 image [N, 3, H, W] -> [N] (in [-1, 1] units)."""
    energies = [detail_band(storage.to_float(images[i:i + RESIZE_CHUNK], device))[1].abs().mean(dim=(1, 2, 3))
                for i in range(0, images.shape[0], RESIZE_CHUNK)]
    return torch.cat(energies)


def match_detail(images: Tensor, reference: float, device: torch.device, rounds: int = 4) -> Tensor:
    """uint8 images [N, 3, H, W] whose finest detail band is scaled until their mean detail energy is
    ``reference`` (the normals'), uint8 on the CPU: sharpness alone no longer tells them from the normals.

    Scaling the band by ``reference / energy`` once falls short (the blur of the scaled image holds
    some of the added detail, and values clip at the ends of the range), so the measure-and-scale
    step is repeated a few ``rounds``. Each ``RESIZE_CHUNK`` of images is matched on its own (every
    chunk's mean reaches ``reference``, so the whole set's does), which bounds the float copy.
    """
    if reference <= 0:
        raise ValueError(f"reference detail energy must be > 0, got {reference}")
    chunks = []
    for i in range(0, images.shape[0], RESIZE_CHUNK):
        current = storage.to_float(images[i:i + RESIZE_CHUNK], device)
        for _ in range(rounds):
            smooth, detail = detail_band(current)
            energy = float(detail.abs().mean())
            if energy <= 0:
                break
            current = (smooth + detail * (reference / energy)).clamp(-1, 1)
        chunks.append(storage.to_uint8(current))
    return torch.cat(chunks)


def draw_images(images: Tensor, count: int, device: torch.device, size: int | None = None) -> Tensor:
    """``count`` images drawn with replacement from uint8 [N, 3, H, W], as floats in [-1, 1] on ``device``."""
    index = torch.randint(0, images.shape[0], (count,))
    drawn = storage.to_float(images[index], device)
    return resize(drawn, size) if size else drawn


def draw_augmented(images: Tensor, count: int, augmentation: AugmentationSpec, generated: bool,
                   device: torch.device) -> Tensor:
    """``draw_images`` followed by the category's augmentation (generated images get the stronger jitter)."""
    return augment(draw_images(images, count, device), augmentation, generated)


@dataclass
class DetectorImages:
    """One detector's training images, already at its input size (uint8, CPU).

    ``detail_ratio[k]``: mean detail energy of level k's generated images over the normal images'
    as sampled (1 = as sharp as the data; logged, a warning when far below and not matched).
    """

    normal: Tensor  # [N, 3, s, s]
    generated: list[Tensor]  # one [M, 3, s, s] per PatchDiff level the detector learns from
    detail_ratio: list[float]


@dataclass
class CategoryTrainingImages:
    """Everything the detector phase of one category draws from."""

    category: str
    detectors: list[DetectorImages]
    augmentation: AugmentationSpec
