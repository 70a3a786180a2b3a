"""DRAEM / MemSeg-style anomaly synthesis: Perlin-noise masks filled with a foreign texture.

Used by GLAD's anomaly-oriented training (methods.md §4.2) and reusable by any method that trains on
synthetic defects. Everything works on float images in [0, 1], shaped [B, 3, H, W], on any device;
random draws come from one ``torch.Generator`` (CPU) so a seed reproduces a batch exactly.

Recipe (per image):
  1. with probability ``1 - anomaly_prob`` the image is returned unchanged (mask all zero);
  2. anomaly source: a random texture from ``texture_dir`` (e.g. DTD) with probability
     ``texture_prob``, otherwise the image itself cut into a ``tile_grid`` x ``tile_grid`` grid of
     shuffled tiles ("structure" anomaly); without a texture folder always the tiles;
     the source goes through ``num_augmenters`` augmenters drawn without replacement from ten;
  3. mask: Perlin noise at scale (2^a, 2^b), a, b uniform in ``perlin_scales``, rotated by a random
     angle in +-``rotate_degrees``, thresholded at ``threshold``, times an optional foreground mask;
  4. blend with beta ~ U(beta_range): inside the mask ``(1 - beta) * source + beta * image``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

from anomaly_bench.data.io import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOREGROUND_MODES = ("none", "otsu", "otsu_inverted")


# --------------------------------------------------------------------------------------- Perlin
def _fade(t: Tensor) -> Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(size: tuple[int, int], scale: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """2-D gradient (Perlin) noise [H, W] with ``scale`` = (cells along H, cells along W).

    Any size works: noise is drawn on the next multiple of the cell count and cropped.
    Values lie in about [-1, 1].
    """
    height, width = size
    cells_y, cells_x = max(1, int(scale[0])), max(1, int(scale[1]))
    step_y, step_x = math.ceil(height / cells_y), math.ceil(width / cells_x)
    angles = 2 * math.pi * torch.rand(cells_y + 1, cells_x + 1, generator=generator)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)  # [cy+1, cx+1, 2]

    ys = torch.arange(cells_y * step_y, dtype=torch.float32) / step_y
    xs = torch.arange(cells_x * step_x, dtype=torch.float32) / step_x
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    cell_y, cell_x = grid_y.floor().long(), grid_x.floor().long()
    frac_y, frac_x = grid_y - cell_y, grid_x - cell_x

    def corner(dy: int, dx: int) -> Tensor:
        g = gradients[cell_y + dy, cell_x + dx]
        return g[..., 0] * (frac_y - dy) + g[..., 1] * (frac_x - dx)

    wy, wx = _fade(frac_y), _fade(frac_x)
    top = torch.lerp(corner(0, 0), corner(0, 1), wx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), wx)
    return (math.sqrt(2) * torch.lerp(top, bottom, wy))[:height, :width]


def perlin_mask(
    size: tuple[int, int],
    perlin_scales: tuple[int, int] = (0, 5),
    threshold: float = 0.3,
    rotate_degrees: float = 90.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Binary float mask [H, W] in {0, 1}: thresholded, randomly rotated Perlin noise (DRAEM)."""
    low, high = perlin_scales
    if not 0 <= low <= high:
        raise ValueError(f"perlin_scales must be (low, high) with 0 <= low <= high, got {perlin_scales}")
    a, b = (int(v) for v in torch.randint(low, high + 1, (2,), generator=generator))
    noise = perlin_noise(size, (2**a, 2**b), generator)
    if rotate_degrees:
        angle = float((torch.rand(1, generator=generator) * 2 - 1) * rotate_degrees)
        noise = TF.rotate(noise[None], angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)[0]
    return (noise > threshold).float()


# ------------------------------------------------------------------------------ foreground mask
def foreground_mask(image: Tensor, mode: str) -> Tensor:
    """Object mask [H, W] in {0, 1} for an image [3, H, W] in [0, 1].

    ``otsu``: object brighter than the background; ``otsu_inverted``: object darker than a light
    background; ``none``: everything counts as foreground (textures, cluttered objects).
    """
    if mode not in FOREGROUND_MODES:
        raise ValueError(f"foreground mode must be one of {FOREGROUND_MODES}, got {mode!r}")
    if mode == "none":
        return torch.ones(image.shape[-2:], device=image.device)
    gray = (image.detach().float().mean(0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    flag = cv2.THRESH_BINARY_INV if mode == "otsu_inverted" else cv2.THRESH_BINARY
    _, binary = cv2.threshold(gray, 0, 1, flag + cv2.THRESH_OTSU)
    return torch.from_numpy(binary.astype(np.float32)).to(image.device)


# -------------------------------------------------------------------------------- augmentations
def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(low + (high - low) * torch.rand(1, generator=generator))


def _gamma(x: Tensor, g: torch.Generator | None) -> Tensor:
    gammas = 0.5 + 1.5 * torch.rand(3, 1, 1, generator=g)  # per channel, 0.5..2
    return x.clamp(0, 1) ** gammas.to(x.device)


def _brightness(x: Tensor, g: torch.Generator | None) -> Tensor:
    return (x * _uniform(0.8, 1.2, g) + _uniform(-30, 30, g) / 255).clamp(0, 1)


def _sharpness(x: Tensor, g: torch.Generator | None) -> Tensor:
    return TF.adjust_sharpness(x.clamp(0, 1), _uniform(0.5, 2.0, g))


def _hue_saturation(x: Tensor, g: torch.Generator | None) -> Tensor:
    # imgaug AddToHueAndSaturation(-50, 50) ~ a hue shift of up to +-50 degrees and a saturation change.
    x = TF.adjust_hue(x.clamp(0, 1), _uniform(-50, 50, g) / 360)
    return TF.adjust_saturation(x, _uniform(0.5, 1.5, g))


def _solarize(x: Tensor, g: torch.Generator | None) -> Tensor:
    return TF.solarize(x.clamp(0, 1), _uniform(32, 128, g) / 255)


def _posterize(x: Tensor, g: torch.Generator | None) -> Tensor:
    bits = int(torch.randint(1, 8, (1,), generator=g))
    return TF.posterize(_to_uint8(x), bits).float() / 255


def _invert(x: Tensor, g: torch.Generator | None) -> Tensor:
    return 1 - x.clamp(0, 1)


def _autocontrast(x: Tensor, g: torch.Generator | None) -> Tensor:
    return TF.autocontrast(x.clamp(0, 1))


def _equalize(x: Tensor, g: torch.Generator | None) -> Tensor:
    return TF.equalize(_to_uint8(x)).float() / 255


def _rotate(x: Tensor, g: torch.Generator | None) -> Tensor:
    return TF.rotate(x, _uniform(-45, 45, g), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)


AUGMENTERS = (
    _gamma, _brightness, _sharpness, _hue_saturation, _solarize,
    _posterize, _invert, _autocontrast, _equalize, _rotate,
)


def augment(image: Tensor, count: int = 3, generator: torch.Generator | None = None) -> Tensor:
    """Apply ``count`` of the ten DRAEM/MemSeg augmenters, drawn without replacement, in random order."""
    if not 0 <= count <= len(AUGMENTERS):
        raise ValueError(f"num_augmenters must be in [0, {len(AUGMENTERS)}], got {count}")
    for index in torch.randperm(len(AUGMENTERS), generator=generator)[:count].tolist():
        image = AUGMENTERS[index](image, generator)
    return image.clamp(0, 1)


def shuffle_tiles(image: Tensor, grid: int = 8, generator: torch.Generator | None = None) -> Tensor:
    """Cut [3, H, W] into grid x grid tiles and shuffle them; a remainder border stays in place."""
    channels, height, width = image.shape
    th, tw = height // grid, width // grid
    if th == 0 or tw == 0:
        raise ValueError(f"image {height}x{width} is too small for a {grid}x{grid} tile grid")
    core = image[:, : th * grid, : tw * grid]
    tiles = core.reshape(channels, grid, th, grid, tw).permute(1, 3, 0, 2, 4).reshape(grid * grid, channels, th, tw)
    tiles = tiles[torch.randperm(grid * grid, generator=generator).to(tiles.device)]
    shuffled = tiles.reshape(grid, grid, channels, th, tw).permute(2, 0, 3, 1, 4).reshape(channels, th * grid, tw * grid)
    out = image.clone()
    out[:, : th * grid, : tw * grid] = shuffled
    return out


class TextureFolder:
    """Random textures (e.g. DTD) from a folder, read lazily and resized to the image size."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"model.init_args.texture_dir {self.root} does not exist or is not a folder; the DTD "
                            "textures come with `anomaly-bench download DTD --root data/dtd` (texture_dir: "
                            "data/dtd/images), or set texture_dir: null to use shuffled tiles of the image")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"model.init_args.texture_dir {self.root} contains no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        from anomaly_bench.data.io import read_image_rgb

        path = self.files[int(torch.randint(len(self.files), (1,), generator=generator))]
        rgb = cv2.resize(read_image_rgb(path), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------------------------- synthesiser
@dataclass
class SynthesisResult:
    images: Tensor  # [B, 3, H, W] in [0, 1]
    masks: Tensor  # [B, H, W] in {0, 1}
    is_anomalous: Tensor  # [B] bool


class AnomalySynthesizer:
    """Batch anomaly synthesis (see the module docstring for the recipe and the defaults' origin)."""

    def __init__(
        self,
        texture_dir: str | Path | None = None,
        anomaly_prob: float = 0.5,
        texture_prob: float = 0.5,
        beta_range: tuple[float, float] = (0.0, 0.8),
        perlin_scales: tuple[int, int] = (0, 5),
        threshold: float = 0.3,
        rotate_degrees: float = 90.0,
        tile_grid: int = 8,
        num_augmenters: int = 3,
        max_tries: int = 10,
    ) -> None:
        for name, p in (("anomaly_prob", anomaly_prob), ("texture_prob", texture_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 1, got {beta_range}")
        self.textures = TextureFolder(texture_dir) if texture_dir else None
        self.anomaly_prob = anomaly_prob
        self.texture_prob = texture_prob
        self.beta_range = tuple(beta_range)
        self.perlin_scales = tuple(perlin_scales)
        self.threshold = threshold
        self.rotate_degrees = rotate_degrees
        self.tile_grid = tile_grid
        self.num_augmenters = num_augmenters
        self.max_tries = max_tries

    def anomaly_source(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A texture (when a folder is given, with probability ``texture_prob``) or shuffled own tiles."""
        size = (image.shape[-2], image.shape[-1])
        if self.textures is not None and float(torch.rand(1, generator=generator)) < self.texture_prob:
            source = self.textures.sample(size, generator).to(image.device)
            return augment(source, self.num_augmenters, generator)
        return shuffle_tiles(augment(image, self.num_augmenters, generator), self.tile_grid, generator)

    def mask(self, size: tuple[int, int], foreground: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """A non-empty Perlin mask inside ``foreground`` when possible (empty after ``max_tries``)."""
        mask = torch.zeros(size)
        for _ in range(self.max_tries):
            mask = perlin_mask(size, self.perlin_scales, self.threshold, self.rotate_degrees, generator)
            if foreground is not None:
                mask = mask * foreground.to(mask.device)
            if mask.any():
                break
        return mask

    def __call__(
        self,
        images: Tensor,
        foreground_modes: list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> SynthesisResult:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"AnomalySynthesizer expects images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if foreground_modes is not None and len(foreground_modes) != batch:
            raise ValueError(f"foreground_modes has {len(foreground_modes)} entries for a batch of {batch}")
        out = images.clone()
        masks = torch.zeros(batch, height, width, device=images.device)
        flags = torch.zeros(batch, dtype=torch.bool, device=images.device)
        for i in range(batch):
            if float(torch.rand(1, generator=generator)) >= self.anomaly_prob:
                continue
            mode = foreground_modes[i] if foreground_modes is not None else "none"
            foreground = None if mode == "none" else foreground_mask(images[i], mode).cpu()
            mask = self.mask((height, width), foreground, generator).to(images.device)
            if not mask.any():
                continue
            source = self.anomaly_source(images[i], generator)
            beta = _uniform(*self.beta_range, generator)
            blended = (1 - beta) * source + beta * images[i]
            out[i] = torch.where(mask.bool()[None], blended, images[i])
            masks[i] = mask
            flags[i] = True
        return SynthesisResult(out.clamp(0, 1), masks, flags)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a [B, H, W] mask (keeps it binary)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0]
