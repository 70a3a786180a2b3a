"""Anomaly-oriented Training Paradigm (ATP): the timestep blend and the modified noise target.

Official code (hyao1/GLAD, June 2024 - March 2025): the synthetic anomaly enters the noisy input in
proportion to t/T, and the UNet is trained to predict the noise that maps the noisy *anomalous*
latent back to the *normal* one. See README.md for why the poster's minus sign is wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, ...] matching ``like``'s rank."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def timestep_blend(z_anomalous: Tensor, z_normal: Tensor, timesteps: Tensor, num_train_timesteps: int) -> Tensor:
    """z_s = (t/T)·z_a + (1 − t/T)·z_n: almost clean at small t, the full anomaly at large t."""
    weight = _expand(timesteps.float() / num_train_timesteps, z_normal)
    return weight * z_anomalous + (1 - weight) * z_normal


def atp_target(
    noise: Tensor, z_blend: Tensor, z_normal: Tensor, alpha_bar_t: Tensor, sign: str = "+"
) -> Tensor:
    """ε* = ε ± √ᾱ_t/√(1−ᾱ_t)·(z_s − z_n).

    ``"+"`` (default, original code): a perfect model's x̂₀ is exactly z_n (the anomaly is removed).
    ``"-"`` (poster, current HEAD): x̂₀ = 2·z_s − z_n, which amplifies the anomaly; kept for ablation.
    """
    if sign not in ("+", "-"):
        raise ValueError(f"atp_sign must be '+' or '-', got {sign!r}")
    a = _expand(alpha_bar_t, noise)
    scale = a.sqrt() / (1 - a).sqrt()
    offset = scale * (z_blend - z_normal)
    return noise + offset if sign == "+" else noise - offset


def add_noise(z0: Tensor, noise: Tensor, alpha_bar_t: Tensor) -> Tensor:
    """Forward diffusion x_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε (ᾱ_t per sample [B] or a scalar tensor)."""
    a = _expand(alpha_bar_t.reshape(-1), z0) if alpha_bar_t.ndim else alpha_bar_t.to(z0.dtype)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def predicted_x0(x_t: Tensor, noise_pred: Tensor, alpha_bar_t: Tensor) -> Tensor:
    """x̂_{t→0} = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t."""
    a = _expand(alpha_bar_t.reshape(-1), x_t) if alpha_bar_t.ndim else alpha_bar_t.to(x_t.dtype)
    return (x_t - (1 - a).sqrt() * noise_pred) / a.sqrt()


def sample_timesteps(batch: int, num_train_timesteps: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """t ~ U{0, …, T−1}, one per sample."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator).to(device)
