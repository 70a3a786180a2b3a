"""PatchDiff: a DDPM whose denoiser sees only an n x n window of pixels (paper seed 003, Fig. 3).

The paper removes self-attention and shrinks the U-Net "so that each bottleneck neuron has a
limited receptive field". It does not give the layout, so we choose the simplest one whose
receptive field is provably exactly ``level x level``:

* a 1x1 stem (RGB + the 2 coordinate channels, encoded per pixel -> C),
* ``(level - 1) / 2`` stride-1 3x3 convolutions grouped in residual blocks (two per block),
* a 1x1 head (C -> 3, the predicted noise).

No resampling, no attention and no *spatial* normalisation: GroupNorm/BatchNorm pool statistics
over the whole image and would make every output pixel depend on every input pixel. We normalise
each pixel over its channels instead (``PixelChannelNorm``), which keeps the window exact. The
timestep enters as a per-image scale/shift, which is spatially constant and so adds no spatial
context. ``tests/models/test_patchdiff_generator.py`` proves the window with a gradient probe.

The coordinate map enters as the paper's raw 2-channel (x, y) map, or optionally through a
per-pixel Fourier encoding (``coord_frequencies`` octaves of sin/cos next to the raw x, y). A small
network fed raw coordinates learns only smooth functions of position (spectral bias), so cell
borders, sockets and connector slots stay smeared over the image for thousands of steps; encoded
coordinates give it sharp absolute position instead, which also lets it copy the global layout
the paper wants it to disregard. The encoding is pointwise, so the receptive field is unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SamplerName = Literal["ddpm", "ddim"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


def coordinate_map(height: int, width: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """[2, H, W] map of (x, y) pixel-centre coordinates in [-1, 1] over the whole image."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])


def encode_coordinates(coords: Tensor, num_frequencies: int) -> Tensor:
    """[B, 2, H, W] coordinates -> [B, 2 + 4F, H, W]: x, y, sin(2^k pi x) for k < F, the same for y, then the cosines.

    Pointwise (no pixel sees another), so it adds nothing to the receptive field.
    """
    if num_frequencies <= 0:
        return coords
    scales = (2.0 ** torch.arange(num_frequencies, device=coords.device, dtype=coords.dtype)) * math.pi
    angles = (coords[:, :, None] * scales[None, None, :, None, None]).flatten(1, 2)  # [B, 2F, H, W]
    return torch.cat([coords, torch.sin(angles), torch.cos(angles)], dim=1)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (DDPM / Transformer convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class PixelChannelNorm(nn.Module):
    """LayerNorm over channels at each pixel separately: no statistic crosses pixels."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class LocalResBlock(nn.Module):
    """Pre-norm residual block with ``num_convs`` (1 or 2) stride-1 3x3 convs and timestep scale/shift."""

    def __init__(self, channels: int, time_dim: int, num_convs: int = 2) -> None:
        super().__init__()
        if num_convs not in (1, 2):
            raise ValueError(f"LocalResBlock supports 1 or 2 convolutions, got {num_convs}")
        self.norms = nn.ModuleList(PixelChannelNorm(channels) for _ in range(num_convs))
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs))
        self.time_proj = nn.Linear(time_dim, 2 * channels)

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        scale, shift = self.time_proj(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = x
        for i, (norm, conv) in enumerate(zip(self.norms, self.convs)):
            h = norm(h)
            if i == 0:
                h = h * (1 + scale) + shift
            h = conv(F.silu(h))
        return x + h


class PatchDiffDenoiser(nn.Module):
    """epsilon-predictor with a receptive field of exactly ``level x level`` pixels.

    Args:
        level: odd window size n >= 1 (paper: 5, 9, 13, 17).
        channels: width C of every layer (our choice; paper unspecified).
        coord_channels: 2 for the (x, y) map of the paper; 0 disables it (ablation only).
        coord_frequencies: octaves of the Fourier encoding of the coordinates (0 = raw map).
    """

    def __init__(self, level: int, channels: int = 64, coord_channels: int = 2, coord_frequencies: int = 0) -> None:
        super().__init__()
        if level < 1 or level % 2 == 0:
            raise ValueError(f"PatchDiff level must be an odd integer >= 1 (e.g. 5, 9, 13, 17), got {level}")
        self.level = level
        if coord_frequencies < 0:
            raise ValueError(f"coord_frequencies must be >= 0, got {coord_frequencies}")
        self.coord_channels = coord_channels
        self.coord_frequencies = coord_frequencies if coord_channels else 0
        time_dim = 4 * channels
        self.channels = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        coord_features = coord_channels * (1 + 2 * self.coord_frequencies)
        self.stem = nn.Conv2d(3 + coord_features, channels, 1)
        num_convs = (level - 1) // 2  # each stride-1 3x3 conv widens the window by 2 pixels
        blocks = [LocalResBlock(channels, time_dim, 2) for _ in range(num_convs // 2)]
        if num_convs % 2:
            blocks.append(LocalResBlock(channels, time_dim, 1))
        self.blocks = nn.ModuleList(blocks)
        self.out_norm = PixelChannelNorm(channels)
        self.head = nn.Conv2d(channels, 3, 1)
        nn.init.zeros_(self.head.weight)  # start as the zero predictor: stable early training
        nn.init.zeros_(self.head.bias)

    def forward(self, noisy: Tensor, timesteps: Tensor, coords: Tensor | None = None) -> Tensor:
        """noisy [B,3,H,W], timesteps [B] (int), coords [B,2,H,W] or None (full-image map)."""
        if self.coord_channels:
            if coords is None:
                coords = coordinate_map(noisy.shape[-2], noisy.shape[-1], noisy.device, noisy.dtype)
                coords = coords.expand(noisy.shape[0], -1, -1, -1)
            noisy = torch.cat([noisy, encode_coordinates(coords.to(noisy.dtype), self.coord_frequencies)], dim=1)
        temb = self.time_mlp(timestep_embedding(timesteps, self.channels).to(noisy.dtype))
        h = self.stem(noisy)
        for block in self.blocks:
            h = block(h, temb)
        return self.head(F.silu(self.out_norm(h)))


def make_scheduler(kind: SamplerName = "ddpm", num_train_timesteps: int = 1000, beta_schedule: BetaSchedule = "linear",
                   beta_start: float = 1e-4, beta_end: float = 0.02, clip_sample: bool = True):
    """A diffusers scheduler with the DDPM paper's schedule (T=1000, linear 1e-4..0.02 by default)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
              "beta_start": beta_start, "beta_end": beta_end, "clip_sample": clip_sample}
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "ddim":
        return DDIMScheduler(**common)
    raise ValueError(f"sampler must be 'ddpm' (ancestral) or 'ddim', got {kind!r}")


class PatchDiff(nn.Module):
    """One level-n PatchDiff: denoiser + DDPM training loss with global tiny noise + samplers.

    Args:
        level: receptive field n of the denoiser in pixels (odd; the paper uses 5, 9, 13 and 17).
        channels: width of every layer of the denoiser (the paper does not say; 64).
        num_train_timesteps: diffusion steps T of the DDPM schedule (paper: 1000).
        beta_schedule: diffusers name of the noise schedule (DDPM's ``linear`` by default).
        beta_start: noise variance beta_1 of the first timestep (DDPM: 1e-4).
        beta_end: noise variance beta_T of the last timestep (DDPM: 0.02).
        global_noise_std: sigma_g of the paper's global tiny noise: one random colour offset per
            training image, the same at every pixel, added to the noised input (paper: 0.02).
        clip_sample: clip the predicted clean image to [-1, 1] at every sampling step (diffusers).
        coord_frequencies: octaves of the sin/cos encoding of the coordinate map (0 = the raw map).
    """

    def __init__(self, level: int, channels: int = 64, num_train_timesteps: int = 1000,
                 beta_schedule: BetaSchedule = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 global_noise_std: float = 0.02, clip_sample: bool = True, coord_frequencies: int = 0) -> None:
        super().__init__()
        if num_train_timesteps < 1:
            raise ValueError(f"model.num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if channels < 1:
            raise ValueError(f"model.generator_channels must be >= 1, got {channels}")
        self.denoiser = PatchDiffDenoiser(level, channels, coord_frequencies=coord_frequencies)
        self.schedule_kwargs = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
                                "beta_start": beta_start, "beta_end": beta_end, "clip_sample": clip_sample}
        self.global_noise_std = global_noise_std
        train_sched = make_scheduler("ddpm", **self.schedule_kwargs)
        self.register_buffer("alphas_cumprod", train_sched.alphas_cumprod.clone().float(), persistent=False)

    @property
    def level(self) -> int:
        return self.denoiser.level

    def global_noise(self, batch: int, device: torch.device, dtype: torch.dtype,
                     generator: torch.Generator | None = None) -> Tensor:
        """epsilon_g: one RGB vector per image, identical at every pixel ([B, 3, 1, 1], std sigma_g)."""
        return torch.randn(batch, 3, 1, 1, device=device, dtype=dtype, generator=generator) * self.global_noise_std

    def noised_input(self, x0: Tensor, noise: Tensor, timesteps: Tensor, global_noise: Tensor | None) -> Tensor:
        """sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_1 (+ eps_g during training): Algorithm 1, line 6."""
        abar = self.alphas_cumprod.to(x0.device)[timesteps].to(x0.dtype)[:, None, None, None]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        return xt if global_noise is None else xt + global_noise

    def training_loss(self, x0: Tensor, coords: Tensor | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """||eps_1 - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps_1 + eps_g, t)||^2 (mean over elements).

        The target is eps_1 alone: the model learns to ignore a global colour offset, which the
        paper reports removes the colour drift of the generated images.
        """
        b = x0.shape[0]
        t = torch.randint(0, self.alphas_cumprod.numel(), (b,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        eps_g = self.global_noise(b, x0.device, x0.dtype, generator) if self.global_noise_std > 0 else None
        pred = self.denoiser(self.noised_input(x0, eps, t, eps_g), t, coords)
        return F.mse_loss(pred.float(), eps.float())

    @torch.no_grad()
    def sample(self, num: int, height: int, width: int, sampler: SamplerName = "ddpm",
               num_inference_steps: int | None = None, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` images in [-1, 1] of size HxW (Algorithm 2; no global noise at sampling).

        ``ddpm`` is the paper's ancestral sampler (all T steps unless ``num_inference_steps`` says
        otherwise); ``ddim`` (eta = 0) is the faster option, 50 steps by default.
        """
        scheduler = make_scheduler(sampler, **self.schedule_kwargs)
        steps = num_inference_steps or (self.schedule_kwargs["num_train_timesteps"] if sampler == "ddpm" else 50)
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(num, 3, height, width, device=device, generator=generator)
        coords = coordinate_map(height, width, device).expand(num, -1, -1, -1)
        was_training = self.training
        self.eval()
        for t in scheduler.timesteps:
            t_batch = torch.full((num,), int(t), device=device, dtype=torch.long)
            eps = self.denoiser(x, t_batch, coords)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        self.train(was_training)
        return x.clamp(-1.0, 1.0)
