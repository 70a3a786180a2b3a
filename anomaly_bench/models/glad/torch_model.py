"""GLADModel: the whole of GLAD's inference as a plain nn.Module (no Lightning).

``model(images, categories) -> AnomalyOutput``: images in [-1, 1] are reconstructed by DDIM from a
per-category T_start with the ADS stop rule and SAFF (``ads.py``), and the input and the raw
reconstruction are compared by DINO global nearest-neighbour distances (``scoring.py``). The model
builds its own diffusion parts and DINO from its options and holds every per-category setting
(``CategoryTable``, bidirectional categories, object masks, the inference seed) in its state dict,
so a saved state scores on its own. Training glue (synthesis, optimiser, τ calibration schedule)
lives in ``lightning_model.py``; the ATP loss is here because it needs the UNet and codec.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.diffusion import SD_V1_HUB_ID, load_diffusion
from anomaly_bench.models.components.synthesis import FOREGROUND_MODES, foreground_mask
from anomaly_bench.models.glad.ads import ADSResult, adaptive_denoise, ddim_timesteps
from anomaly_bench.models.glad.atp import add_noise, atp_target, sample_timesteps, timestep_blend
from anomaly_bench.models.glad.categories import CategoryTable
from anomaly_bench.models.glad.dino import DINO_VITB8, DinoFeatures, build_vit
from anomaly_bench.models.glad.finetuned_dino import split_scoring_dino
from anomaly_bench.models.glad.scoring import (
    gaussian_blur, grid_shape, imagenet_normalize, layer_distance_map, nn_distance, pixel_l1_term,
    smooth_object_mask, topk_mean,
)
from anomaly_bench.types import AnomalyOutput

log = logging.getLogger(__name__)

ForegroundMode = Literal["none", "otsu", "otsu_inverted"]
EXTRA_STATE_VERSION = 1


@dataclass
class DiffusionReconstruction:
    """What GLAD's diffusion produces for a batch of images."""

    images: Tensor  # [B, 3, H, W], the decoded reconstruction, raw (nominally [-1, 1]; see clamp_reconstruction)
    ads: ADSResult  # the ADS record: stop steps, triggers, per-step scores


class GLADModel(nn.Module):
    """GLAD: Stable-Diffusion reconstruction with ADS/SAFF, scored by DINO nearest-neighbour maps.

    ``model(images, categories) -> AnomalyOutput``: ``anomaly_map`` [B, R, R] at the DINO
    resolution R and ``pred_score`` [B], raw (larger = more anomalous). Images are in [-1, 1].

    Args:
        diffusion: where the UNet, VAE and prompt embeddings come from: a hub id
            (``CompVis/stable-diffusion-v1-4``), a local diffusers folder, ``tiny`` (a small
            random-init UNet on pixels, for tests and demos) or ``sd-v1-random`` (the SD v1
            architecture with random weights, for speed checks).
        prompt: the fixed text prompt the UNet is conditioned on in training and inference.
        use_vae: diffuse in the VAE latent space (Stable Diffusion); False diffuses on pixels.
        tiny_vae: with ``diffusion: tiny``, add a tiny random VAE (latents at half resolution).
        tiny_image_size: image size the ``tiny`` UNet, VAE and ViT are built for (pixels).
        unet_width: channel width of the ``tiny`` UNet's first level (the second is twice that);
            at least the latent's channels (3·f² with ``tiny_space_to_depth`` f), or the UNet
            cannot predict the noise of every channel (a warning says so).
        tiny_space_to_depth: with ``diffusion: tiny`` and no VAE, fold each f x f block of pixels
            into channels before the UNet (1 = plain pixels): an exactly invertible latent, so the
            UNet runs on an f-times smaller grid while reconstructions keep every pixel.
        dino: timm name of the DINO ViT (``vit_base_patch8_224.dino``) or ``tiny`` (a 4-block
            random ViT, for tests and demos).
        dino_weights: a local file of the original pretrained DINO weights (works offline); used by
            both ADS and scoring unless ``scoring_dino_weights`` is given.
        dino_pretrained: load pretrained DINO weights (False: the architecture with random weights).
        scoring_dino_weights: a state-dict file of a fine-tuned DINO (the official VisA / PCB-Bank
            recipe) used for the final anomaly map only; ADS keeps a frozen copy of the original.
        dino_resolution: input and reconstruction are resized to this square size before scoring
            (official: 512 for MVTec / MPDD, 256 for VisA); the anomaly map has this size.
        score_layers: DINO blocks (1-based) whose nearest-neighbour maps are summed (official 3, 6, 9, 12).
        ads_layer: DINO block whose tokens measure drift inside ADS (official: the last, 12).
        ads_top_k: ADS compares the mean of this many largest token distances with τ (official 10).
        ads_imagenet_norm: ImageNet-normalise images before the ADS DINO (official: no, raw [-1, 1]).
        score_top_k: the image score is the mean of this many largest map pixels (official 250).
        blur_sigma: σ of the Gaussian blur of the map and of the object mask (official 6, kernel 49).
        clamp_reconstruction: clamp the decoded reconstruction to [-1, 1] before scoring. The
            official code scores it raw (default False); version 0.1 clamped, and its checkpoints
            keep clamping so that they score as they did.
        guidance_scale: classifier-free guidance scale at inference (official 9; <= 1 runs the
            conditional branch only).
        num_inference_steps: DDIM steps K from T_start (official 25; 15 for VisA).
        t_start: default diffusion start step T_start (per category: ``category_params``).
        tau: default ADS threshold τ on the top-k DINO drift (per category: ``category_params`` or
            a calibrated value).
        t_min: default step below which an image that never exceeded τ is re-anchored to its input.
        noise_offset: the input is noised to T_start + this (official: 0 for MVTec / MPDD, -1 else).
        pixel_l1_weight: default weight v of the pixel-L1 term added to the map (official VisA: 1-7).
        category_params: the per-class table ``{category: {t_start, tau, t_min, noise_offset,
            pixel_l1_weight}}`` over the defaults above (the official tables are in the configs).
        use_ads: run the ADS stop rule (False: plain DDIM from T_start, no DINO inside the loop).
        use_saff: on an ADS trigger, blend with m = sigmoid(distance) (False: keep the generated
            estimate, the "without SAFF" ablation).
        bidirectional_categories: categories whose map also adds the reverse nearest-neighbour
            direction (official: transistor, pcb1, pcb4).
        object_masks: ``{category: otsu | otsu_inverted | none}``: multiply the map by a blurred
            Otsu foreground of the input (official: screw, capsule, bracket_black/brown inverted,
            bracket_white plain).
        atp_sign: sign of the ATP target offset: ``+`` (original code: the implied clean estimate
            is the normal latent) or ``-`` (the poster's formula, kept for ablation).
        sample_posterior: ATP training encodes with a VAE posterior sample (official) instead of its mean.
        inference_seed: seed of the noise draws that start the DDIM trajectories of a batch.
        num_reconstructions: reconstructions per image, each from its own noise draw, whose maps
            are averaged (official: 1). With a weak diffusion model (the random tiny demo) one
            draw's map is noisy on normal texture too; the mean of a few draws keeps what every
            reconstruction disagrees with (a defect) and averages out what one draw got wrong.

    Attributes:
        table: the ``CategoryTable`` (defaults, per-class entries, calibrated τ).
        last_stop_steps: after ``forward``, each image's ADS stop step in its first reconstruction
            (-1: never stopped).
    """

    def __init__(
        self,
        diffusion: str = SD_V1_HUB_ID,
        prompt: str = "a photo of sks",
        use_vae: bool = True,
        tiny_vae: bool = False,
        tiny_image_size: int = 32,
        unet_width: int = 32,
        tiny_space_to_depth: int = 1,
        dino: str = DINO_VITB8,
        dino_weights: str | None = None,
        dino_pretrained: bool = True,
        scoring_dino_weights: str | None = None,
        dino_resolution: int = 512,
        score_layers: Sequence[int] = (3, 6, 9, 12),
        ads_layer: int = 12,
        ads_top_k: int = 10,
        ads_imagenet_norm: bool = False,
        score_top_k: int = 250,
        blur_sigma: float = 6.0,
        clamp_reconstruction: bool = False,
        guidance_scale: float = 9.0,
        num_inference_steps: int = 25,
        t_start: int = 750,
        tau: float = 0.4,
        t_min: int = 350,
        noise_offset: int = 0,
        pixel_l1_weight: float = 0.0,
        category_params: dict[str, dict[str, float]] | None = None,
        use_ads: bool = True,
        use_saff: bool = True,
        bidirectional_categories: list[str] | None = None,
        object_masks: dict[str, ForegroundMode] | None = None,
        atp_sign: Literal["+", "-"] = "+",
        sample_posterior: bool = True,
        inference_seed: int = 0,
        num_reconstructions: int = 1,
    ) -> None:
        super().__init__()
        if atp_sign not in ("+", "-"):
            raise ValueError(f"GLAD atp_sign must be '+' or '-', got {atp_sign!r}")
        self.table = CategoryTable.from_options(t_start, tau, t_min, noise_offset, pixel_l1_weight, category_params)
        self.bidirectional_categories = sorted(set(bidirectional_categories or []))
        self.object_masks = validate_foreground_modes(object_masks, "object_masks")
        self.inference_seed = int(inference_seed)
        if int(num_reconstructions) < 1:
            raise ValueError(f"GLAD num_reconstructions must be >= 1, got {num_reconstructions}")
        self.num_reconstructions = int(num_reconstructions)

        parts = load_diffusion(diffusion, prompt=prompt, use_vae=use_vae, image_size=tiny_image_size,
                               tiny_vae=tiny_vae, unet_width=unet_width, space_to_depth=tiny_space_to_depth)
        self.unet = parts.unet
        self.codec = parts.codec.eval().requires_grad_(False)
        self.register_buffer("prompt_embeds", parts.prompt_embeds.float())
        self.register_buffer("negative_prompt_embeds", parts.negative_prompt_embeds.float())
        self.register_buffer("alphas_cumprod", parts.alphas_cumprod.float())
        features = DinoFeatures(build_vit(dino, dino_weights, tiny_image_size, pretrained=dino_pretrained))
        # 'dino' scores the final map; 'frozen_ads_dino' exists only when the scoring DINO is fine-tuned
        self.dino, self.frozen_ads_dino = split_scoring_dino(features, scoring_dino_weights)
        for layer in (*score_layers, ads_layer):
            if not 1 <= layer <= self.dino.depth:
                raise ValueError(f"DINO layer {layer} out of range 1..{self.dino.depth} (score_layers/ads_layer)")

        self.guidance_scale = guidance_scale
        self.num_inference_steps = num_inference_steps
        self.score_layers = list(score_layers)
        self.ads_layer = ads_layer
        self.ads_top_k = ads_top_k
        self.ads_imagenet_norm = ads_imagenet_norm
        self.score_top_k = score_top_k
        self.dino_resolution = dino_resolution
        self.blur_sigma = blur_sigma
        self.clamp_reconstruction = bool(clamp_reconstruction)
        self.use_ads = use_ads
        self.use_saff = use_saff
        self.atp_sign = atp_sign
        self.sample_posterior = sample_posterior
        self.last_stop_steps: Tensor | None = None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def ads_dino(self) -> DinoFeatures:
        """The DINO inside ADS: the original one (a frozen copy when the scoring DINO is fine-tuned)."""
        return self.frozen_ads_dino if self.frozen_ads_dino is not None else self.dino

    def separate_ads_dino(self) -> None:
        """Give ADS its own frozen copy of the current DINO, so that the scoring DINO can be
        fine-tuned (``dino_finetune.py``) while ADS keeps measuring drift with the original."""
        if self.frozen_ads_dino is None:
            self.frozen_ads_dino = copy.deepcopy(self.dino).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "GLADModel":
        super().train(mode)
        self.codec.eval()  # frozen parts never switch to training behaviour
        self.dino.eval()
        if self.frozen_ads_dino is not None:
            self.frozen_ads_dino.eval()
        return self

    # --------------------------------------------------------------------- per-category state
    def params_for(self, category: str | None) -> dict[str, float]:
        """The inference values (t_start, tau, t_min, noise_offset, pixel_l1_weight) of one category."""
        return self.table.params_for(category)

    def get_extra_state(self) -> dict[str, Any]:
        # plain Python values: the tables and calibrated τ travel with every state dict / checkpoint
        return {"version": EXTRA_STATE_VERSION, **self.table.state(),
                "bidirectional_categories": list(self.bidirectional_categories),
                "object_masks": dict(self.object_masks), "inference_seed": self.inference_seed,
                "clamp_reconstruction": self.clamp_reconstruction}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != EXTRA_STATE_VERSION:
            raise ValueError(f"GLAD state: unknown per-category state (expected version {EXTRA_STATE_VERSION}), "
                             f"got {state.get('version') if isinstance(state, Mapping) else type(state).__name__}")
        # What fit learned (the calibrated τ) and the 0.1 clamp come from the saved state; the tables,
        # masks and seed stay as configured: the config and command line win over a checkpoint.
        _note_differences(self.get_extra_state(), state)
        self.table.calibrated_tau = {str(c): float(v) for c, v in (state.get("calibrated_tau") or {}).items()}
        self.clamp_reconstruction = bool(state.get("clamp_reconstruction", False))

    # --------------------------------------------------------------------------------- UNet
    def _unet(self, latents: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(latents.to(dtype), t, encoder_hidden_states=embeds.to(dtype)).sample

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

    # ----------------------------------------------------------------------------- training
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

    # ------------------------------------------------------------------------ reconstruction
    def _ads_distance(self, x0_input: Tensor, x0_generated: Tensor) -> Tensor:
        """Last-block DINO global-NN distance between the decoded input-anchored and generated estimates."""
        n = x0_input.shape[0]
        images = self.codec.decode(torch.cat([x0_input, x0_generated]))
        if self.ads_imagenet_norm:
            images = imagenet_normalize(images)
        dino = self.ads_dino
        tokens = dino(images.to(_dtype(dino)), [self.ads_layer])[0]
        grid = grid_shape(tokens.shape[1], *images.shape[-2:])
        return nn_distance(tokens[:n], tokens[n:]).reshape(n, *grid)

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
    ) -> DiffusionReconstruction:
        """Reconstruct a batch that shares one T_start; τ and t_min are per image [B].

        The decoded reconstruction is returned raw, as the official pipeline scores it (unless
        ``clamp_reconstruction``): clamping changes the DINO features of saturated regions.
        """
        z0 = self.codec.encode(images, sample=False).float()
        noise = torch.randn(z0.shape, generator=generator) if generator is not None else torch.randn(z0.shape)
        timesteps = ddim_timesteps(t_start, self.num_inference_steps)
        start_level = min(max(t_start + noise_offset, 0), self.num_train_timesteps - 1)
        result = adaptive_denoise(
            z0, noise.to(z0.device), timesteps, self.alphas_cumprod, self.predict_noise,
            self._ads_distance, tau, t_min, start_level, use_ads=use_ads, use_saff=use_saff,
            top_k=self.ads_top_k, record_scores=record_scores,
        )
        decoded = self.codec.decode(result.latents).float()
        return DiffusionReconstruction(decoded.clamp(-1, 1) if self.clamp_reconstruction else decoded, result)

    @torch.no_grad()
    def reconstruct_categories(self, images: Tensor, params: Sequence[Mapping[str, float]],
                               generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Reconstruct images with per-image settings: (raw reconstructions, ADS stop steps [B]).

        Images sharing (T_start, noise offset) share one batched trajectory, in first-seen order,
        each group drawing its start noise from ``generator`` in turn.
        """
        recon = torch.empty_like(images, dtype=torch.float32)
        stop_steps = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((int(p["t_start"]), int(p["noise_offset"])), []).append(i)
        for (t_start, offset), members in groups.items():
            idx = torch.tensor(members, device=images.device)
            tau = torch.tensor([float(params[i]["tau"]) for i in members])
            t_min = torch.tensor([int(params[i]["t_min"]) for i in members])
            result = self.reconstruct(images[idx], t_start, tau, t_min, self.use_ads, self.use_saff, offset, generator)
            recon[idx] = result.images
            stop_steps[idx] = result.ads.stop_step
        return recon, stop_steps

    @torch.no_grad()
    def ads_peak_scores(self, images: Tensor, category: str | None, generator: torch.Generator) -> Tensor:
        """Each image's largest ADS score before its search ends, with τ = ∞ (what τ calibration reads) [B]."""
        params = self.table.params_for(category, with_calibration=False)  # τ itself is not used here
        n = images.shape[0]
        recon = self.reconstruct(images, int(params["t_start"]), torch.full((n,), float("inf")),
                                 torch.full((n,), int(params["t_min"])), use_ads=True, use_saff=self.use_saff,
                                 noise_offset=int(params["noise_offset"]), generator=generator, record_scores=True)
        trace = torch.stack(recon.ads.score_trace)  # [steps, n], nan where an image no longer searches
        return torch.nan_to_num(trace, nan=-float("inf")).amax(dim=0)

    # ------------------------------------------------------------------------------ scoring
    def scoring_input(self, images: Tensor) -> Tensor:
        """What the scoring DINO sees: images in [-1, 1] resized to the DINO resolution (bilinear,
        align_corners=True, official) and ImageNet-normalised."""
        size = (self.dino_resolution, self.dino_resolution)
        images = images.float()
        if images.shape[-2:] != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        return imagenet_normalize(images)

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
        normalized = self.scoring_input(torch.cat([images, recon]))
        tokens = self.dino(normalized.to(_dtype(self.dino)), self.score_layers)
        batch = images.shape[0]
        grid = grid_shape(tokens[0].shape[1], *size)
        maps = layer_distance_map([t[:batch] for t in tokens], [t[batch:] for t in tokens], grid, size, bidirectional)
        if pixel_l1_weight is not None and bool((pixel_l1_weight != 0).any()):
            # official: the pixel difference is taken between the ImageNet-normalised images
            maps = maps + pixel_l1_term(normalized[:batch], normalized[batch:], maps, pixel_l1_weight.to(maps.device))
        maps = gaussian_blur(maps, self.blur_sigma)
        if object_mask is not None:
            maps = maps * F.interpolate(object_mask[:, None].float(), size=size, mode="bilinear",
                                        align_corners=True)[:, 0]
        return maps

    def image_score(self, maps: Tensor) -> Tensor:
        """Mean of the top ``score_top_k`` pixels (250 in the official code)."""
        return topk_mean(maps, self.score_top_k)

    def object_mask(self, images: Tensor, categories: Sequence[str | None]) -> Tensor | None:
        """Blurred Otsu foreground per image for categories listed in ``object_masks``, else None."""
        modes = [self.object_masks.get(c, "none") if c is not None else "none" for c in categories]
        if all(m == "none" for m in modes):
            return None
        masks = torch.stack([foreground_mask((img + 1) / 2, m) for img, m in zip(images, modes)])
        return smooth_object_mask(masks, self.blur_sigma)

    @torch.no_grad()
    def forward(self, images: Tensor, categories: Sequence[str | None] | None = None) -> AnomalyOutput:
        """Reconstruct and score a batch with each image's category settings.

        Args:
            images: [B, 3, H, W] in [-1, 1].
            categories: each image's category (selects T_start, τ, t_min, noise offset, pixel
                weight, bidirectional scoring, object mask); None scores every image as the one
                category the model was calibrated on, or with the scalar defaults.
        """
        names = self.table.categories(categories, images.shape[0])
        params = [self.params_for(c) for c in names]
        generator = torch.Generator().manual_seed(self.inference_seed)
        weights = torch.tensor([float(p["pixel_l1_weight"]) for p in params], device=images.device)
        bidirectional = torch.tensor([c in self.bidirectional_categories for c in names], device=images.device)
        object_mask = self.object_mask(images, names)
        maps = None
        # draws follow one another from the one generator: the first is exactly the single-draw result
        for draw in range(self.num_reconstructions):
            recon, stop_steps = self.reconstruct_categories(images, params, generator)
            if draw == 0:
                self.last_stop_steps = stop_steps
            one = self.anomaly_map(images, recon, weights, bidirectional, object_mask)
            maps = one if maps is None else maps + one
        maps = maps / self.num_reconstructions
        return AnomalyOutput(anomaly_map=maps, pred_score=self.image_score(maps))


def _note_differences(configured: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    # the configured values are used; say so when they differ from the ones the model was fitted with
    changed = [key for key in configured if key not in ("version", "calibrated_tau", "clamp_reconstruction")
               and key in saved and saved[key] != configured[key]]
    if changed:
        log.warning("GLAD: the configured %s differ from the checkpoint's; the configured values are used",
                    ", ".join(changed))


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def validate_foreground_modes(table: Mapping[str, str] | None, name: str) -> dict[str, str]:
    """A copy of ``{category: foreground mode}``; an unknown mode names the option and category."""
    for category, mode in (table or {}).items():
        if mode not in FOREGROUND_MODES:
            raise ValueError(f"GLAD {name}[{category!r}] = {mode!r}; expected one of {FOREGROUND_MODES}")
    return dict(table or {})
