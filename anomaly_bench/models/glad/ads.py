"""Adaptive Denoising Steps (ADS) and Spatial-Adaptive Feature Fusion (SAFF), batched.

One DDIM run (η = 0) from T_start. While an image is still *searching*, each step also builds the
input-anchored estimate (the input latent re-noised at t with the same ε, denoised with the same ε̂)
and measures how far the generated estimate has drifted from it (``distance_map``: decode both,
last-block DINO global nearest-neighbour distance). The first step whose top-k mean distance
exceeds τ switches the image to the SAFF blend m·x̂ + (1−m)·x^in with m = sigmoid(A); an image
that never exceeds τ is re-anchored to the input estimate at the first step below t_min.
Images that stopped searching cost nothing extra: decodes and DINO passes run on the searching
subset only, and stop entirely once no image searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.glad.scoring import topk_mean

NoisePredictor = Callable[[Tensor, int], Tensor]
DistanceMap = Callable[[Tensor, Tensor], Tensor]  # (x0_input_anchored, x0_generated) latents -> [n, h, w]


def ddim_timesteps(t_start: int, num_steps: int, offset: int = 1) -> list[int]:
    """'Leading' DDIM spacing over [0, T_start): stride ⌊T_start/K⌋, plus ``offset``.

    T_start = 750, K = 25 -> 721, 691, …, 1 (the official modified pipeline).
    """
    if num_steps < 1 or t_start < num_steps:
        raise ValueError(f"need 1 <= num_inference_steps <= t_start, got K={num_steps}, T_start={t_start}")
    stride = t_start // num_steps
    return [i * stride + offset for i in reversed(range(num_steps))]


def saff_blend(x0_generated: Tensor, x0_input: Tensor, distance: Tensor) -> Tensor:
    """m·x̂ + (1 − m)·x^in with m = sigmoid(A), A resized (bilinear) to the latent grid.

    A = 1 − cos ∈ [0, 2] so m ∈ [0.5, 0.88]: a soft blend that never keeps the input fully (official).
    """
    if distance.shape[-2:] != x0_generated.shape[-2:]:
        distance = F.interpolate(distance[:, None].float(), size=x0_generated.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
    m = torch.sigmoid(distance.float())[:, None].to(x0_generated.dtype)
    return m * x0_generated + (1 - m) * x0_input


@dataclass
class ADSDecision:
    x0: Tensor  # chosen clean estimate for the searching subset
    triggered: Tensor  # [n] bool: score > τ (SAFF applied)
    reanchored: Tensor  # [n] bool: never exceeded τ and t < t_min
    scores: Tensor  # [n] top-k mean distance


def ads_decide(
    x0_generated: Tensor, x0_input: Tensor, distance: Tensor, tau: Tensor, t: int, t_min: Tensor,
    top_k: int = 10, use_saff: bool = True,
) -> ADSDecision:
    """The stop rule for the images still searching (all tensors restricted to them)."""
    scores = topk_mean(distance, top_k)
    triggered = scores > tau
    reanchored = ~triggered & (t < t_min)
    fused = saff_blend(x0_generated, x0_input, distance) if use_saff else x0_generated
    shape = (-1,) + (1,) * (x0_generated.ndim - 1)
    x0 = torch.where(triggered.view(shape), fused, x0_generated)
    x0 = torch.where(reanchored.view(shape), x0_input, x0)
    return ADSDecision(x0, triggered, reanchored, scores)


@dataclass
class ADSResult:
    latents: Tensor  # final latents [B, ...]
    stop_step: Tensor  # [B] long: t at which the search stopped, -1 if it never did
    triggered: Tensor  # [B] bool: stopped because the distance exceeded τ
    searched_steps: int  # steps that ran the extra decodes + DINO passes
    score_trace: list[Tensor] = field(default_factory=list)  # per step [B] scores (nan: not searching)


def _alpha(alphas_cumprod: Tensor, t: int) -> Tensor:
    return alphas_cumprod[t] if t >= 0 else alphas_cumprod[0]  # set_alpha_to_one = False


def adaptive_denoise(
    z0: Tensor,
    noise: Tensor,
    timesteps: list[int],
    alphas_cumprod: Tensor,
    predict_noise: NoisePredictor,
    distance_map: DistanceMap | None,
    tau: Tensor,
    t_min: Tensor,
    start_level: int,
    use_ads: bool = True,
    use_saff: bool = True,
    top_k: int = 10,
    record_scores: bool = False,
) -> ADSResult:
    """Run DDIM from ``start_level`` over ``timesteps`` with the ADS/SAFF rule (see module doc).

    ``use_ads=False`` is a plain fixed-step DDIM reconstruction (no decodes, no DINO).
    """
    batch = z0.shape[0]
    device = z0.device
    z0, noise = z0.float(), noise.float()
    a_start = alphas_cumprod[start_level]
    z = a_start.sqrt() * z0 + (1 - a_start).sqrt() * noise
    searching = torch.full((batch,), bool(use_ads and distance_map is not None), device=device)
    stop_step = torch.full((batch,), -1, dtype=torch.long, device=device)
    triggered_all = torch.zeros(batch, dtype=torch.bool, device=device)
    tau, t_min = tau.to(device).float(), t_min.to(device)
    trace: list[Tensor] = []
    searched = 0
    for i, t in enumerate(timesteps):
        a_t = _alpha(alphas_cumprod, t)
        a_prev = _alpha(alphas_cumprod, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
        eps_hat = predict_noise(z, t).float()
        x0 = (z - (1 - a_t).sqrt() * eps_hat) / a_t.sqrt()
        if bool(searching.any()):
            searched += 1
            idx = searching.nonzero().squeeze(1)
            z_in = a_t.sqrt() * z0[idx] + (1 - a_t).sqrt() * noise[idx]
            x0_in = (z_in - (1 - a_t).sqrt() * eps_hat[idx]) / a_t.sqrt()
            distance = distance_map(x0_in, x0[idx]).float()
            decision = ads_decide(x0[idx], x0_in, distance, tau[idx], t, t_min[idx], top_k, use_saff)
            x0 = x0.clone()
            x0[idx] = decision.x0
            stopped = decision.triggered | decision.reanchored
            stop_step[idx[stopped]] = t
            triggered_all[idx[decision.triggered]] = True
            searching[idx[stopped]] = False
            if record_scores:
                row = torch.full((batch,), float("nan"), device=device)
                row[idx] = decision.scores
                trace.append(row)
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_hat
    return ADSResult(z, stop_step, triggered_all, searched, trace)
