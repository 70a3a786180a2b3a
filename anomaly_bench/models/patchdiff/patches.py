"""Training patches for the detector: augmentation (paper Tables 5-6) and the three patch kinds.

positives  C+ : RandCrop(I + F) for normal I                    (content at its true position)
negatives  C-1: RandCrop(I) + RandCrop(F) for normal I          (content at a wrong position)
negatives  C-2: RandCrop(I + F) for generated I                 (PatchDiff's contrastive patterns)

Everything runs batched on the training device with torch ops; images are in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.patchdiff.detector import PATCH_SIZE
from anomaly_bench.models.patchdiff.generator import coordinate_map

# Paper Tables 5 and 6: categories trained *without* flips (every other category uses both).
_NO_FLIPS = {"cable", "capsule", "metal_nut", "pill", "breakfast_box", "juice_bottle"}
_HFLIP_ONLY = {"toothbrush", "transistor"}


@dataclass
class AugmentationSpec:
    """Augmentation of one category. Defaults: the paper's setting for most categories."""

    hflip: bool = True
    vflip: bool = True
    rotation_degrees: float = 5.0
    jitter_p: float = 0.2
    jitter_normal: float = 0.05
    jitter_generated: float = 0.5

    @classmethod
    def from_dict(cls, values: dict, where: str) -> AugmentationSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown augmentation keys {sorted(unknown)}; expected a subset of "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def paper_augmentation(category: str) -> AugmentationSpec:
    """The Table 5/6 row for ``category`` (MVTec AD / MVTec LOCO names); unknown names get flips."""
    name = category.lower().replace(" ", "_")
    if name in _NO_FLIPS:
        return AugmentationSpec(hflip=False, vflip=False)
    if name in _HFLIP_ONLY:
        return AugmentationSpec(hflip=True, vflip=False)
    return AugmentationSpec()


def resolve_augmentation(category: str, overrides: dict | None) -> AugmentationSpec:
    """Paper default for the category, updated by ``overrides['default']`` then ``overrides[category]``."""
    spec = paper_augmentation(category)
    if not overrides:
        return spec
    values = dict(spec.__dict__)
    for key in ("default", category):
        if key in overrides and overrides[key] is not None:
            if not isinstance(overrides[key], dict):
                raise ValueError(f"model.augmentations.{key} must be a mapping, got {overrides[key]!r}")
            values.update(overrides[key])
    return AugmentationSpec.from_dict(values, f"model.augmentations for category {category!r}")


def _rand(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator)


def _uniform(n: int, low: float, high: float, device, generator) -> Tensor:
    return low + (high - low) * _rand(n, device, generator)


def color_jitter(images: Tensor, strength: float, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (shift in [-s, s] turns,
    s capped at 0.5), applied to each image with probability ``p``. Images in [-1, 1]."""
    if strength <= 0 or p <= 0:
        return images
    n, device = images.shape[0], images.device
    x = (images + 1) / 2
    apply = (_rand(n, device, generator) < p).view(n, 1, 1, 1)
    lo = max(0.0, 1 - strength)
    b = _uniform(n, lo, 1 + strength, device, generator).view(n, 1, 1, 1)
    c = _uniform(n, lo, 1 + strength, device, generator).view(n, 1, 1, 1)
    s = _uniform(n, lo, 1 + strength, device, generator).view(n, 1, 1, 1)
    h = min(strength, 0.5)
    hue = _uniform(n, -h, h, device, generator) * 2 * math.pi
    weights = torch.tensor([0.299, 0.587, 0.114], device=device, dtype=x.dtype).view(1, 3, 1, 1)
    y = (x * b).clamp(0, 1)
    mean = (y * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = (y * weights).sum(1, keepdim=True)
    y = (gray + (y - gray) * s).clamp(0, 1)
    # hue: rotate the chroma plane of YIQ
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=device, dtype=x.dtype)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, y)
    cos, sin = torch.cos(hue).view(n, 1, 1), torch.sin(hue).view(n, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    y = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    return torch.where(apply, y * 2 - 1, images)


def augment(images: Tensor, spec: AugmentationSpec, generated: bool,
            generator: torch.Generator | None = None) -> Tensor:
    """Random flips, rotation in +-degrees and colour jitter of a batch [N,3,H,W] in [-1, 1].

    Only the pixels move; the coordinate map stays the image's, so a flip produces a normal
    pattern at mirrored positions (which is why the paper disables flips for layout-bound
    categories).
    """
    n, device = images.shape[0], images.device
    x = images
    if spec.hflip:
        flip = (_rand(n, device, generator) < 0.5).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    if spec.vflip:
        flip = (_rand(n, device, generator) < 0.5).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(-2), x)
    if spec.rotation_degrees > 0:
        angle = _uniform(n, -spec.rotation_degrees, spec.rotation_degrees, device, generator) * math.pi / 180
        cos, sin = torch.cos(angle), torch.sin(angle)
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    strength = spec.jitter_generated if generated else spec.jitter_normal
    return color_jitter(x, strength, spec.jitter_p, generator)


def _crop_indices(n_images: int, per_image: int, height: int, width: int, size: int, device,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Image index [P], row index [P,size,1] and column index [P,1,size] of P random windows."""
    if height < size or width < size:
        raise ValueError(f"images of {height}x{width} are smaller than the {size}x{size} detector patch")
    p = n_images * per_image
    img = torch.arange(n_images, device=device).repeat_interleave(per_image)
    top = torch.randint(0, height - size + 1, (p,), device=device, generator=generator)
    left = torch.randint(0, width - size + 1, (p,), device=device, generator=generator)
    ar = torch.arange(size, device=device)
    return img, (top[:, None] + ar[None])[:, :, None], (left[:, None] + ar[None])[:, None, :]


def random_crops(tensors: Tensor, per_image: int, size: int = PATCH_SIZE,
                 generator: torch.Generator | None = None) -> Tensor:
    """``per_image`` random size x size windows of each [N,C,H,W] tensor -> [N*per_image, C, size, size]."""
    n, _, h, w = tensors.shape
    img, rows, cols = _crop_indices(n, per_image, h, w, size, tensors.device, generator)
    # advanced indexing: [P, size, size, C] -> [P, C, size, size]
    return tensors.permute(0, 2, 3, 1)[img[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()


@dataclass
class PatchBatch:
    """One detector training batch: positives and negatives of both kinds (kept apart for logging)."""

    positives: Tensor  # [P, 5, s, s]
    shuffled: Tensor  # [P, 5, s, s]   normal content at the wrong coordinates
    generated: Tensor  # [k*P, 5, s, s] generated content at its coordinates
    extra: dict = field(default_factory=dict)

    @property
    def negatives(self) -> Tensor:
        return torch.cat([self.shuffled, self.generated], dim=0)


def make_patch_batch(normal_pos: Tensor, normal_neg: Tensor, generated: list[Tensor], coords: Tensor,
                     per_image: int, size: int = PATCH_SIZE,
                     generator: torch.Generator | None = None) -> PatchBatch:
    """Build C+, C-1 and C-2 from images already augmented and resized to the detector input.

    normal_pos / normal_neg: [n, 3, H, W]; generated: one [m, 3, H, W] tensor per PatchDiff level;
    coords: [2, H, W]. Each image contributes ``per_image`` patches (paper: 4 images x 32 = 128).
    """
    def with_coords(images: Tensor) -> Tensor:
        return torch.cat([images, coords.to(images.dtype).expand(images.shape[0], -1, -1, -1)], dim=1)

    positives = random_crops(with_coords(normal_pos), per_image, size, generator)
    image_part = random_crops(normal_neg, per_image, size, generator)
    coord_part = random_crops(coords[None].to(normal_neg.dtype), normal_neg.shape[0] * per_image, size, generator)
    shuffled = torch.cat([image_part, coord_part], dim=1)
    gen = [random_crops(with_coords(g), per_image, size, generator) for g in generated]
    generated_patches = torch.cat(gen, dim=0) if gen else positives.new_zeros((0, *positives.shape[1:]))
    return PatchBatch(positives=positives, shuffled=shuffled, generated=generated_patches)


def crops_with_coordinates(images: Tensor, size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One random size x size crop of each image [N,3,H,W] and the matching crop of the image's
    coordinate map: a local generator trained on crops sees every window exactly as in the whole
    image (up to border effects), at a fraction of the cost."""
    coords = coordinate_map(*images.shape[-2:], images.device).expand(images.shape[0], -1, -1, -1)
    crops = random_crops(torch.cat([images, coords], 1), 1, size, generator)
    return crops[:, :3], crops[:, 3:]
