"""GLADModel: the pure nn.Module (diffusion reconstruction with ADS/SAFF, ATP loss, DINO scoring).

Images enter and leave in [-1, 1]. The Lightning wrapper (``lightning_model.py``) owns synthesis,
per-category hyper-parameters, τ calibration and optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.diffusion import DiffusionParts
from anomaly_bench.models.glad.ads import ADSResult, adaptive_denoise, ddim_timesteps
from anomaly_bench.models.glad.atp import add_noise, atp_target, sample_timesteps, timestep_blend
from anomaly_bench.models.glad.dino import DinoFeatures
from anomaly_bench.models.glad.scoring import (
    grid_shape, imagenet_normalize, layer_distance_map, nn_distance, gaussian_blur, pixel_l1_term, topk_mean,
)


@dataclass
class Reconstruction:
    images: Tensor  # [B, 3, H, W] in [-1, 1]
    ads: ADSResult


class GLADModel(nn.Module):
    """Stable-Diffusion-style reconstruction + DINO nearest-neighbour scoring.

    Args:
        parts: UNet, latent codec, prompt embeddings and ᾱ schedule (``components.diffusion``).
        dino: frozen DINO token extractor; used inside ADS (last block, no ImageNet normalisation,
            as the official code) and for the final map (``score_layers``, ImageNet-normalised).
        guidance_scale: classifier-free guidance at inference (official 9; ≤ 1 disables the
            unconditional pass).
        dino_resolution: images and reconstructions are resized to this before scoring.
    """

    def __init__(
        self,
        parts: DiffusionParts,
        dino: DinoFeatures,
        guidance_scale: float = 9.0,
        num_inference_steps: int = 25,
        score_layers: tuple[int, ...] = (3, 6, 9, 12),
        ads_layer: int = 12,
        ads_top_k: int = 10,
        ads_imagenet_norm: bool = False,
        score_top_k: int = 250,
        dino_resolution: int = 512,
        blur_sigma: float = 6.0,
        atp_sign: str = "+",
        sample_posterior: bool = True,
    ) -> None:
        super().__init__()
        self.unet = parts.unet
        self.codec = parts.codec.eval().requires_grad_(False)
        self.dino = dino
        self.register_buffer("prompt_embeds", parts.prompt_embeds.float())
        self.register_buffer("negative_prompt_embeds", parts.negative_prompt_embeds.float())
        self.register_buffer("alphas_cumprod", parts.alphas_cumprod.float())
        for layer in (*score_layers, ads_layer):
            if not 1 <= layer <= dino.depth:
                raise ValueError(f"DINO layer {layer} out of range 1..{dino.depth} (score_layers/ads_layer)")
        self.guidance_scale = guidance_scale
        self.num_inference_steps = num_inference_steps
        self.score_layers = list(score_layers)
        self.ads_layer = ads_layer
        self.ads_top_k = ads_top_k
        self.ads_imagenet_norm = ads_imagenet_norm
        self.score_top_k = score_top_k
        self.dino_resolution = dino_resolution
        self.blur_sigma = blur_sigma
        self.atp_sign = atp_sign
        self.sample_posterior = sample_posterior

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def train(self, mode: bool = True) -> "GLADModel":
        super().train(mode)
        self.codec.eval()  # frozen parts never switch to training behaviour
        self.dino.eval()
        return self

    # --------------------------------------------------------------------------- UNet
    def _unet(self, latents: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(latents.to(dtype), t, encoder_hidden_states=embeds.to(dtype)).sample
        return out

    def predict_noise(self, latents: Tensor, t: int) -> Tensor:
        """ε̂ with classifier-free guidance: ε_u + s·(ε_c − ε_u), both branches in one UNet call."""
        batch = latents.shape[0]
        cond = self.prompt_embeds.expand(batch, -1, -1)
        timestep = torch.full((batch,), int(t), device=latents.device, dtype=torch.long)
        if self.guidance_scale <= 1.0:
            return self._unet(latents, timestep, cond)
        uncond = self.negative_prompt_embeds.expand(batch, -1, -1)
        both = self._unet(torch.cat([latents, latents]), torch.cat([timestep, timestep]), torch.cat([uncond, cond]))
        eps_uncond, eps_cond = both.float().chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    # ----------------------------------------------------------------------- training
    def training_loss(self, clean: Tensor, synthesized: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ATP loss: MSE between ε_θ(x_t, t) and ε* (prompt-conditioned, no prompt dropout)."""
        with torch.no_grad():
            latents = self.codec.encode(torch.cat([clean, synthesized]), sample=self.sample_posterior).float()
        z_normal, z_anomalous = latents.chunk(2)
        batch = z_normal.shape[0]
        t = sample_timesteps(batch, self.num_train_timesteps, z_normal.device, generator)
        noise = torch.randn(z_normal.shape, generator=generator).to(z_normal.device) if generator is not None \
            else torch.randn_like(z_normal)
        alpha_bar = self.alphas_cumprod[t]
        z_blend = timestep_blend(z_anomalous, z_normal, t, self.num_train_timesteps)
        noisy = add_noise(z_blend, noise, alpha_bar)
        target = atp_target(noise, z_blend, z_normal, alpha_bar, self.atp_sign)
        prediction = self._unet(noisy, t, self.prompt_embeds.expand(batch, -1, -1))
        return F.mse_loss(prediction.float(), target.float())

    # ---------------------------------------------------------------------- inference
    def _ads_distance(self, x0_input: Tensor, x0_generated: Tensor) -> Tensor:
        """Last-block DINO global-NN distance between the decoded input-anchored and generated estimates."""
        n = x0_input.shape[0]
        images = self.codec.decode(torch.cat([x0_input, x0_generated]))
        if self.ads_imagenet_norm:
            images = imagenet_normalize(images)
        tokens = self.dino(images.to(self._dino_dtype()), [self.ads_layer])[0]
        height, width = images.shape[-2:]
        grid = grid_shape(tokens.shape[1], height, width)
        return nn_distance(tokens[:n], tokens[n:]).reshape(n, *grid)

    def _dino_dtype(self) -> torch.dtype:
        return next(self.dino.parameters()).dtype

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        t_start: int,
        tau: Tensor,
        t_min: Tensor,
        use_ads: bool = True,
        use_saff: bool = True,
        noise_offset: int = 0,
        generator: torch.Generator | None = None,
        record_scores: bool = False,
    ) -> Reconstruction:
        """Reconstruct a batch that shares one T_start; τ and t_min are per image [B]."""
        z0 = self.codec.encode(images, sample=False).float()
        noise = (torch.randn(z0.shape, generator=generator) if generator is not None else torch.randn(z0.shape))
        timesteps = ddim_timesteps(t_start, self.num_inference_steps)
        start_level = min(max(t_start + noise_offset, 0), self.num_train_timesteps - 1)
        result = adaptive_denoise(
            z0, noise.to(z0.device), timesteps, self.alphas_cumprod, self.predict_noise,
            self._ads_distance, tau, t_min, start_level, use_ads=use_ads, use_saff=use_saff,
            top_k=self.ads_top_k, record_scores=record_scores,
        )
        recon = self.codec.decode(result.latents).float().clamp(-1, 1)
        return Reconstruction(recon, result)

    @torch.no_grad()
    def anomaly_map(
        self,
        images: Tensor,
        recon: Tensor,
        pixel_l1_weight: Tensor | None = None,
        bidirectional: Tensor | None = None,
        object_mask: Tensor | None = None,
    ) -> Tensor:
        """[B, R, R] map at the DINO resolution R: Σ_l NN(1 − cos) maps (+ pixel term), blurred, masked."""
        size = (self.dino_resolution, self.dino_resolution)
        both = torch.cat([images, recon]).float()
        if both.shape[-2:] != size:
            both = F.interpolate(both, size=size, mode="bilinear", align_corners=True)
        tokens = self.dino(imagenet_normalize(both).to(self._dino_dtype()), self.score_layers)
        batch = images.shape[0]
        grid = grid_shape(tokens[0].shape[1], *size)
        maps = layer_distance_map([t[:batch] for t in tokens], [t[batch:] for t in tokens], grid, size, bidirectional)
        if pixel_l1_weight is not None and bool((pixel_l1_weight != 0).any()):
            maps = maps + pixel_l1_term(both[:batch], both[batch:], maps, pixel_l1_weight.to(maps.device))
        maps = gaussian_blur(maps, self.blur_sigma)
        if object_mask is not None:
            maps = maps * F.interpolate(object_mask[:, None].float(), size=size, mode="bilinear",
                                        align_corners=True)[:, 0]
        return maps

    def image_score(self, maps: Tensor) -> Tensor:
        """Mean of the top ``score_top_k`` pixels (250 in the official code)."""
        return topk_mean(maps, self.score_top_k)

    def forward(
        self, images: Tensor, t_start: int, tau: Tensor, t_min: Tensor, use_ads: bool = True, use_saff: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Reconstruction]:
        """Reconstruct and score with one set of hyper-parameters: (maps [B, R, R], scores [B], recon)."""
        recon = self.reconstruct(images, t_start, tau, t_min, use_ads, use_saff, generator=generator)
        maps = self.anomaly_map(images, recon.images)
        return maps, self.image_score(maps), recon
