"""Continuous feature grids: learnable lattices read out by bilinear interpolation at learned coordinates.

This is the "continuous memory" of CRAD (and the normal grid of bi-grid GRAD). One place for the
conventions, which the official code fixes and the papers do not spell out:

* ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``. A normalised
  coordinate u in [-1, 1] addresses the continuous index v = ((u + 1) * R - 1) / 2 of a grid with R
  cells per axis; the value there is the paper's Eq. (1) interpolation of the neighbouring cells,
  with cells outside the lattice reading as zero.
* Coordinate channel 0 is the x (width, last) axis, channel 1 the y (height) axis, channel 2 the z
  (depth) axis; ``coord_dim`` 1, 2 or 3 selects a 1-D, 2-D or 3-D grid (the paper's Table 8).
* Coordinates come from small nets ending in tanh (bounded in (-1, 1)).
* Grids are initialised Xavier-normal on their ``(1, C, R, ..., R)`` shape, i.e.
  std = sqrt(2 / ((C + 1) * R^D)).
* The global grid stores a full C x H x W feature map per lattice cell and is sampled for the whole
  batch in one ``grid_sample`` call, the batch riding on the output's spatial axis.
* Coordinate jitter (training only) adds N(0, std^2) to local coordinates, after tanh, unclamped.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

JITTER_MODES = ("iteration", "pixel")


def _check_coord_dim(coord_dim: int) -> None:
    if coord_dim not in (1, 2, 3):
        raise ValueError(f"coord_dim must be 1, 2 or 3 (grid dimension), got {coord_dim}")


def grid_shape(channels: int, resolution: int, coord_dim: int) -> tuple[int, ...]:
    """Parameter shape of a ``coord_dim``-D grid. A 1-D grid is stored as (1, C, 1, R) so that
    ``grid_sample`` (which is 2-D or 3-D) can read it with y fixed at 0 (the single row's centre)."""
    _check_coord_dim(coord_dim)
    if coord_dim == 1:
        return (1, channels, 1, resolution)
    return (1, channels) + (resolution,) * coord_dim


def sample_grid(grid: Tensor, coords: Tensor) -> Tensor:
    """Bilinear (trilinear for 3-D) read-out of ``grid`` at normalised ``coords``.

    Args:
        grid: [N, C, *lattice] with lattice (1, R) for 1-D, (R, R) for 2-D, (R, R, R) for 3-D.
        coords: [N, *out_spatial, D] with D = coord_dim and values in [-1, 1] for the lattice's
            extent (anything outside blends with zeros); out_spatial has 2 dims for 1-D/2-D grids
            and 3 dims for 3-D grids, as ``F.grid_sample`` expects.

    Returns:
        [N, C, *out_spatial].
    """
    coord_dim = coords.shape[-1]
    if coord_dim == 1:
        # Pad y = 0: with a single row and align_corners=False, 0 hits that row's centre exactly.
        coords = torch.cat([coords, torch.zeros_like(coords)], dim=-1)
    if coords.dtype != grid.dtype:
        coords = coords.to(grid.dtype)
    return F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=False)


class LocalGrid(nn.Module):
    """A lattice of C-dim feature vectors, read per pixel: coords [B, D, H, W] -> features [B, C, H, W].

    CRAD: C = 216, R = 8, D = 2 (an 8x8 lattice of 216-d vectors)."""

    def __init__(self, channels: int, resolution: int = 8, coord_dim: int = 2) -> None:
        super().__init__()
        self.channels, self.resolution, self.coord_dim = channels, resolution, coord_dim
        self.grid = nn.Parameter(torch.empty(grid_shape(channels, resolution, coord_dim)))
        nn.init.xavier_normal_(self.grid)

    def forward(self, coords: Tensor) -> Tensor:
        if coords.ndim != 4 or coords.shape[1] != self.coord_dim:
            raise ValueError(f"LocalGrid expects coords [B, {self.coord_dim}, H, W], got {tuple(coords.shape)}")
        b, d, h, w = coords.shape
        sampling = coords.permute(0, 2, 3, 1)  # [B, H, W, D]
        if d == 3:
            sampling = sampling.unsqueeze(1)  # [B, 1, H, W, 3]: one depth slice of output
        # expand (not repeat): the batch shares one grid, gradients sum into it.
        out = sample_grid(self.grid.expand(b, *self.grid.shape[1:]), sampling)
        return out.squeeze(2) if d == 3 else out


def interpolation_weights(coords: Tensor, resolution: int) -> Tensor:
    """Dense bilinear weights equal to ``grid_sample(bilinear, zeros, align_corners=False)``.

    coords [N, D] (channel 0 = x) -> weights [N, R^D] over the lattice flattened in the grid's
    memory order (z, y, x). Neighbours outside the lattice get no weight (zero padding).
    Gradients reach the coordinates through the fractional parts, as in ``grid_sample``.
    """
    n, d = coords.shape
    cells = torch.arange(resolution, device=coords.device)
    weights = None
    for axis in range(d):  # x, y, z; the flattened layout is (z, y, x) so later axes go first
        v = ((coords[:, axis].float() + 1.0) * resolution - 1.0) / 2.0
        low = torch.floor(v)
        frac = v - low
        low = low.long()[:, None]
        w = (1.0 - frac)[:, None] * (cells == low) + frac[:, None] * (cells == low + 1)  # [N, R]
        weights = w if weights is None else (w[:, :, None] * weights[:, None, :]).reshape(n, -1)
    return weights


class GlobalGrid(nn.Module):
    """A lattice of whole feature maps (C*H*W-dim vectors), read once per image.

    coords [B, D] -> features [B, C, H, W]. The whole batch is sampled at once. ``method="grid_sample"``
    is the official formulation: the B coordinates form a B x 1 sampling grid, giving [1, CHW, B, 1],
    permuted to [B, CHW] and reshaped channel-major to [B, C, H, W]. ``method="matmul"`` (default)
    computes the identical bilinear weights explicitly and applies them as one matrix product, which
    is much faster on GPU for 169k channels. CRAD: C*H*W = 216*28*28, R = 4, D = 2.
    """

    def __init__(
        self, channels: int, height: int, width: int, resolution: int = 4, coord_dim: int = 2, method: str = "matmul"
    ) -> None:
        super().__init__()
        if method not in ("matmul", "grid_sample"):
            raise ValueError(f"GlobalGrid method must be 'matmul' or 'grid_sample', got {method!r}")
        self.channels, self.height, self.width = channels, height, width
        self.resolution, self.coord_dim, self.method = resolution, coord_dim, method
        self.grid = nn.Parameter(torch.empty(grid_shape(channels * height * width, resolution, coord_dim)))
        nn.init.xavier_normal_(self.grid)

    def forward(self, coords: Tensor) -> Tensor:
        if coords.ndim != 2 or coords.shape[1] != self.coord_dim:
            raise ValueError(f"GlobalGrid expects coords [B, {self.coord_dim}], got {tuple(coords.shape)}")
        b, d = coords.shape
        if self.method == "matmul":
            # Same numbers as the grid_sample call below, as one [B, R^D] x [R^D, CHW] product:
            # grid_sample's CUDA kernel runs one thread per output point (here only B of them)
            # and loops over the 169k channels, which made it the slowest op of a CRAD step.
            flat = self.grid.reshape(self.grid.shape[1], -1)  # [CHW, R^D]
            weights = interpolation_weights(coords, self.resolution).to(flat.dtype)
            out = weights @ flat.t()
            return out.reshape(b, self.channels, self.height, self.width)
        sampling = coords.reshape(1, b, 1, d) if d < 3 else coords.reshape(1, b, 1, 1, d)
        out = sample_grid(self.grid, sampling)  # [1, CHW, B, 1(, 1)]
        return out.reshape(out.shape[1], b).t().reshape(b, self.channels, self.height, self.width)


class LocalCoordinateNet(nn.Module):
    """Per-pixel coordinates: 1x1 conv C->C, tanh, 1x1 conv C->D, tanh. [B, C, H, W] -> [B, D, H, W]."""

    def __init__(self, channels: int, coord_dim: int = 2) -> None:
        super().__init__()
        _check_coord_dim(coord_dim)
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.Tanh(), nn.Conv2d(channels, coord_dim, 1), nn.Tanh()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GlobalCoordinateNet(nn.Module):
    """Per-image coordinates: global average pool, Linear C->C, tanh, Linear C->D, tanh. -> [B, D]."""

    def __init__(self, channels: int, coord_dim: int = 2) -> None:
        super().__init__()
        _check_coord_dim(coord_dim)
        self.net = nn.Sequential(
            nn.Linear(channels, channels), nn.Tanh(), nn.Linear(channels, coord_dim), nn.Tanh()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.mean(dim=(2, 3)))


class CoordinateJitter(nn.Module):
    """Gaussian noise on local coordinates, in training only (identity in eval mode).

    mode="iteration" (official code): with probability ``p`` per forward call, every coordinate of
    the batch gets N(0, std^2) noise. mode="pixel" (paper text, "50 % of pixel-wise features"):
    each pixel's coordinate vector is perturbed independently with probability ``p``.
    The noise is not clamped, so coordinates may leave [-1, 1] and read zero padding.
    """

    def __init__(self, std: float = 0.05, p: float = 0.5, mode: str = "iteration") -> None:
        super().__init__()
        if mode not in JITTER_MODES:
            raise ValueError(f"jitter mode must be one of {JITTER_MODES}, got {mode!r}")
        if not 0.0 <= p <= 1.0 or std < 0:
            raise ValueError(f"jitter needs 0 <= p <= 1 and std >= 0, got p={p}, std={std}")
        self.std, self.p, self.mode = float(std), float(p), mode

    def forward(self, coords: Tensor) -> Tensor:
        if not self.training or self.std == 0.0 or self.p == 0.0:
            return coords
        if self.mode == "iteration":
            if float(torch.rand(())) >= self.p:
                return coords
            return coords + torch.randn_like(coords) * self.std
        noise = torch.randn_like(coords) * self.std
        keep = torch.rand((coords.shape[0], 1, *coords.shape[2:]), device=coords.device) < self.p
        return coords + noise * keep.to(coords.dtype)


class LocalGlobalGrid(nn.Module):
    """CRAD's normal representation: local and global grids with their coordinate nets.

    x [B, C, H, W] -> concat([global sample, local sample]) [B, out_channels, H, W] (official
    order: global first). Either branch can be switched off (paper ablation); ``out_channels`` is
    C times the number of active branches. ``last_coords`` keeps the latest (local, global)
    coordinates for inspection/visualisation.

    Args:
        channels: feature channels C of the map the grids reconstruct.
        height: feature-map height H (the global grid stores whole maps, so it is fixed).
        width: feature-map width W.
        use_local: keep the local grid (per-pixel coordinates); False = the paper's global-only ablation.
        use_global: keep the global grid (one coordinate per image); False = local-only ablation.
        local_resolution: lattice points per axis of the local grid (CRAD 8).
        global_resolution: lattice points per axis of the global grid (CRAD 4).
        local_dim: dimension of the local coordinate space (2 in the paper).
        global_dim: dimension of the global coordinate space (2 in the paper).
        use_jitter: add Gaussian noise to the local coordinates in training (paper Sec. 3.2).
        jitter_std: standard deviation of that noise (official 0.05).
        jitter_p: probability the noise is applied (official 0.5).
        jitter_mode: ``iteration`` (official code: all pixels on a fraction ``jitter_p`` of the
            forward calls) or ``pixel`` (paper text: a fraction ``jitter_p`` of the pixels).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        use_local: bool = True,
        use_global: bool = True,
        local_resolution: int = 8,
        global_resolution: int = 4,
        local_dim: int = 2,
        global_dim: int = 2,
        use_jitter: bool = True,
        jitter_std: float = 0.05,
        jitter_p: float = 0.5,
        jitter_mode: Literal["iteration", "pixel"] = "iteration",
    ) -> None:
        super().__init__()
        if not use_jitter:
            jitter_std, jitter_p = 0.0, 0.0
        if not (use_local or use_global):
            raise ValueError("LocalGlobalGrid needs at least one of use_local / use_global")
        self.channels, self.height, self.width = channels, height, width
        self.use_local, self.use_global = use_local, use_global
        if use_local:
            self.local_coords = LocalCoordinateNet(channels, local_dim)
            self.jitter = CoordinateJitter(jitter_std, jitter_p, jitter_mode)
            self.local_grid = LocalGrid(channels, local_resolution, local_dim)
        if use_global:
            self.global_coords = GlobalCoordinateNet(channels, global_dim)
            self.global_grid = GlobalGrid(channels, height, width, global_resolution, global_dim)
        self.out_channels = channels * (int(use_local) + int(use_global))
        self.last_coords: tuple[Tensor | None, Tensor | None] = (None, None)

    def grid_parameters(self) -> list[nn.Parameter]:
        """The lattices (they train with a 100x larger learning rate than the nets)."""
        return [m.grid for m in self.modules() if isinstance(m, (LocalGrid, GlobalGrid))]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (self.channels, self.height, self.width):
            raise ValueError(
                f"LocalGlobalGrid was built for features [B, {self.channels}, {self.height}, {self.width}], "
                f"got {tuple(x.shape)}; the global grid fixes the feature size, so the image size of the "
                "data must match the model's image_size"
            )
        parts, local_c, global_c = [], None, None
        if self.use_global:
            global_c = self.global_coords(x)
            parts.append(self.global_grid(global_c))
        if self.use_local:
            local_c = self.jitter(self.local_coords(x))
            parts.append(self.local_grid(local_c))
        self.last_coords = tuple(c.detach() if c is not None else None for c in (local_c, global_c))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
