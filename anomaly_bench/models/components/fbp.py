"""Feature-level anomaly sources for training an abnormal grid (bi-grid GRAD).

Every source has the same call signature, so the model can swap them for the paper's ablation::

    pasted_features, anomaly_mask = source(features, gt_mask)

``features`` are the frozen backbone features ``[B, C, h, w]``; ``gt_mask`` is the batch's
ground-truth mask ``[B, H, W]`` at image resolution (only :class:`RealAnomalySource` reads it).
The returned mask is bool ``[B, h, w]``: True where the features were made anomalous. Inputs are
never modified in place (the official code pastes in place, which silently corrupts any loss target
computed from the same tensor later in the iteration).

* :class:`FeatureBlockPaste` (FBP, the paper's Sec. III-C): a random-walk blob of constant
  intensity, Gaussian-blurred, added to every channel. The label mask is the *un-blurred* walk, so
  the blurred halo counts as normal (official behaviour).
* :class:`GaussianNoiseSource`: SimpleNet-style additive Gaussian noise on a random subset of
  positions (the paper's ablation row "Gaussian noise").
* :class:`RealAnomalySource`: features untouched, mask from real ground truth (the paper's
  "external anomaly samples"; needs anomalous images in the training data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.blur import gaussian_blur

MOVES_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
MOVES_8 = MOVES_4 + ((-1, -1), (-1, 1), (1, -1), (1, 1))
BOUNDARIES = ("wander", "clamp")


class AnomalySource(Protocol):
    """What the bi-grid model calls in its abnormal-grid training stage."""

    def __call__(self, features: Tensor, gt_mask: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class WalkBlock:
    """One sampled FBP block.

    radius: B, the canvas is ``(2B+1) x (2B+1)``.
    centre: (row, col) of the canvas centre on the feature map (= the walk's start).
    intensity: I, the value written at every walked canvas cell before blurring.
    sigma: the Gaussian blur's standard deviation for this block (0 = no blur).
    path: ``[steps+1, 2]`` canvas coordinates (row, col) of the walker, start included; with the
        ``wander`` boundary some may lie outside the canvas (those cells are not marked).
    canvas: bool ``[(2B+1), (2B+1)]``, the walked cells inside the canvas.
    """

    radius: int
    centre: tuple[int, int]
    intensity: float
    sigma: float
    path: Tensor
    canvas: Tensor


def random_walk(
    radius: int,
    steps: int,
    moves: tuple[tuple[int, int], ...] = MOVES_4,
    boundary: str = "wander",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Walk ``steps`` unit moves from the centre of a ``(2r+1)^2`` canvas and mark the visited cells.

    ``boundary="wander"`` (official code): a step may leave the canvas; it is not marked but the
    walker keeps its position and may re-enter. ``boundary="clamp"``: moves that would leave the
    canvas are replaced by staying put, so the marked set is always one connected blob.

    Returns ``(path [steps+1, 2] long, canvas [(2r+1), (2r+1)] bool)``; the start cell is marked.
    """
    if radius < 0 or steps < 0:
        raise ValueError(f"random_walk needs radius >= 0 and steps >= 0, got radius={radius}, steps={steps}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"random_walk boundary must be one of {BOUNDARIES}, got {boundary!r}")
    side = 2 * radius + 1
    move_table = torch.tensor(moves, dtype=torch.long)
    choice = torch.randint(len(moves), (steps,), generator=generator)
    deltas = move_table[choice]
    start = torch.tensor([[radius, radius]], dtype=torch.long)
    if boundary == "wander":
        path = torch.cat([start, start + torch.cumsum(deltas, dim=0)], dim=0)
    else:
        positions = [start[0]]
        for delta in deltas:
            nxt = positions[-1] + delta
            positions.append(nxt if bool(((nxt >= 0) & (nxt < side)).all()) else positions[-1])
        path = torch.stack(positions)
    inside = ((path >= 0) & (path < side)).all(dim=1)
    canvas = torch.zeros(side, side, dtype=torch.bool)
    canvas[path[inside, 0], path[inside, 1]] = True
    return path, canvas


def blur_per_map(maps: Tensor, kernel_size: int, sigmas: Tensor) -> Tensor:
    """Blur ``[N, 1, H, W]`` maps, each with its own sigma (a sigma of 0 leaves that map unchanged)."""
    if kernel_size <= 1:
        return maps
    out = maps.clone()
    for i, sigma in enumerate(sigmas.tolist()):
        if sigma > 0:
            out[i : i + 1, 0] = gaussian_blur(maps[i : i + 1, 0], sigma, kernel_size).to(maps.dtype)
    return out


def _sample_uniform(bounds: float | tuple[float, float], generator: torch.Generator | None) -> float:
    if isinstance(bounds, (int, float)):
        return float(bounds)
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * float(torch.rand((), generator=generator))


class FeatureBlockPaste(nn.Module):
    """Feature Block Paste (FBP): paste random-walk blobs of constant intensity into feature maps.

    Defaults follow the official code (methods.md §2.3); the paper's wording is available through
    the arguments (``walk_steps=None``, ``neighbourhood=8``).

    Args:
        radius_range: B = floor(U(low, high)); official (0.5, 10) gives B in 0..9. B is clipped so
            the canvas fits the feature map.
        intensity_range: I ~ U(low, high), added to the features (official (8, 16)); a number
            fixes I.
        walk_steps: number of moves (official 100); ``None`` = the paper's N ~ U{B, ..., 2B}.
        neighbourhood: 4 (official: one axis +-1 per step) or 8 (the paper's dx, dy in {-1,0,1},
            without the useless "stay" move).
        boundary: ``"wander"`` (official) or ``"clamp"``, see :func:`random_walk`.
        blur_kernel_size: odd Gaussian kernel size (official 3); <= 1 disables the blur.
        blur_sigma: a number (torchvision's functional default for k=3 is 0.8) or a (low, high)
            range sampled per block (torchvision's ``GaussianBlur`` transform default (0.1, 2.0)).
        per_image: False (official) = one block per call, shared by every image of the batch;
            True = an independent block per image.
    """

    def __init__(
        self,
        radius_range: tuple[float, float] = (0.5, 10.0),
        intensity_range: float | tuple[float, float] = (8.0, 16.0),
        walk_steps: int | None = 100,
        neighbourhood: int = 4,
        boundary: str = "wander",
        blur_kernel_size: int = 3,
        blur_sigma: float | tuple[float, float] = 0.8,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        if neighbourhood not in (4, 8):
            raise ValueError(f"FeatureBlockPaste neighbourhood must be 4 or 8, got {neighbourhood}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"FeatureBlockPaste boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if len(radius_range) != 2 or radius_range[0] > radius_range[1] or radius_range[0] < 0:
            raise ValueError(
                f"FeatureBlockPaste radius_range must be (low, high) with 0 <= low <= high, got {radius_range}"
            )
        if walk_steps is not None and walk_steps < 0:
            raise ValueError(f"FeatureBlockPaste walk_steps must be >= 0 or None, got {walk_steps}")
        if blur_kernel_size > 1 and blur_kernel_size % 2 == 0:
            raise ValueError(f"FeatureBlockPaste blur_kernel_size must be odd, got {blur_kernel_size}")
        self.radius_range = tuple(float(r) for r in radius_range)
        self.intensity_range = intensity_range
        self.walk_steps = walk_steps
        self.moves = MOVES_4 if neighbourhood == 4 else MOVES_8
        self.boundary = boundary
        self.blur_kernel_size = int(blur_kernel_size)
        self.blur_sigma = blur_sigma
        self.per_image = per_image

    def sample_block(self, height: int, width: int, generator: torch.Generator | None = None) -> WalkBlock:
        """Draw one block (size, walk, centre, intensity, blur) for an ``height x width`` map."""
        max_radius = (min(height, width) - 1) // 2
        radius = min(int(math.floor(_sample_uniform(self.radius_range, generator))), max_radius)
        if self.walk_steps is None:
            steps = int(torch.randint(radius, 2 * radius + 1, (), generator=generator))
        else:
            steps = self.walk_steps
        path, canvas = random_walk(radius, steps, self.moves, self.boundary, generator)
        row = int(torch.randint(radius, height - radius, (), generator=generator))
        col = int(torch.randint(radius, width - radius, (), generator=generator))
        intensity = _sample_uniform(self.intensity_range, generator)
        sigma = _sample_uniform(self.blur_sigma, generator) if self.blur_kernel_size > 1 else 0.0
        return WalkBlock(radius, (row, col), intensity, sigma, path, canvas)

    @staticmethod
    def render(blocks: list[WalkBlock], height: int, width: int) -> tuple[Tensor, Tensor]:
        """Place blocks on empty maps.

        Returns ``(paste [N, 1, H, W] float, I on walked cells; mask [N, H, W] bool)``.
        """
        masks = torch.zeros(len(blocks), height, width, dtype=torch.bool)
        paste = torch.zeros(len(blocks), 1, height, width)
        for i, block in enumerate(blocks):
            r = block.radius
            (row, col), side = block.centre, 2 * r + 1
            masks[i, row - r : row - r + side, col - r : col - r + side] = block.canvas
            paste[i, 0][masks[i]] = block.intensity
        return paste, masks

    def forward(
        self, features: Tensor, gt_mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(features + blurred paste on every channel, un-blurred walk mask [B, h, w] bool)``."""
        if features.ndim != 4:
            raise ValueError(f"FeatureBlockPaste expects features [B, C, h, w], got {tuple(features.shape)}")
        batch, _, height, width = features.shape
        count = batch if self.per_image else 1
        blocks = [self.sample_block(height, width, generator) for _ in range(count)]
        paste, masks = self.render(blocks, height, width)
        sigmas = torch.tensor([b.sigma for b in blocks])
        blurred = blur_per_map(paste, self.blur_kernel_size, sigmas).to(features)
        masks = masks.to(features.device).expand(batch, height, width)
        return features + blurred, masks


class GaussianNoiseSource(nn.Module):
    """SimpleNet-style anomalies: i.i.d. Gaussian noise added to a random subset of feature vectors.

    SimpleNet perturbs every feature of a copy and labels the copy anomalous; with a per-pixel
    loss we instead perturb each position with probability ``probability`` and label it.

    Args:
        std: noise standard deviation in feature units (guess; see the GRAD README).
        probability: fraction of positions that receive noise.
    """

    def __init__(self, std: float = 1.0, probability: float = 0.5) -> None:
        super().__init__()
        if std <= 0 or not 0.0 < probability <= 1.0:
            raise ValueError(
                f"GaussianNoiseSource needs std > 0 and 0 < probability <= 1, got {std}, {probability}"
            )
        self.std = float(std)
        self.probability = float(probability)

    def forward(
        self, features: Tensor, gt_mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        batch, channels, height, width = features.shape
        mask = torch.rand(batch, height, width, generator=generator) < self.probability
        noise = torch.randn(batch, channels, height, width, generator=generator) * self.std
        mask = mask.to(features.device)
        noisy = features + noise.to(features) * mask[:, None].to(features.dtype)
        return noisy, mask


class RealAnomalySource(nn.Module):
    """Real anomalies: features are left as they are, the mask comes from the ground truth.

    A feature cell is anomalous when at least ``min_fraction`` of its image pixels are (default:
    any pixel, so that thin defects survive the stride-8 downsampling).
    """

    def __init__(self, min_fraction: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"RealAnomalySource min_fraction must be in [0, 1), got {min_fraction}")
        self.min_fraction = float(min_fraction)

    def forward(
        self, features: Tensor, gt_mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if gt_mask is None:
            raise ValueError("RealAnomalySource needs the batch's ground-truth mask (batch.mask), got None")
        if gt_mask.ndim != 3 or gt_mask.shape[0] != features.shape[0]:
            raise ValueError(
                f"RealAnomalySource expects gt_mask [B, H, W] with B={features.shape[0]}, "
                f"got {tuple(gt_mask.shape)}"
            )
        fraction = F.adaptive_avg_pool2d((gt_mask > 0.5).float()[:, None], features.shape[-2:])[:, 0]
        return features, (fraction > self.min_fraction).to(features.device)


SOURCES: dict[str, type[nn.Module]] = {
    "fbp": FeatureBlockPaste,
    "gaussian_noise": GaussianNoiseSource,
    "real": RealAnomalySource,
}


def build_anomaly_source(name: str, options: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate a source by config name (``fbp`` | ``gaussian_noise`` | ``real``)."""
    if name not in SOURCES:
        raise ValueError(f"unknown anomaly_source {name!r}; expected one of {sorted(SOURCES)}")
    try:
        return SOURCES[name](**(options or {}))
    except TypeError as err:
        raise ValueError(f"bad anomaly_source_options for {name!r}: {err}") from err
