"""GLAD as an AnomalyModule: ATP training, per-category inference tables, τ calibration on normals."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.diffusion import SD_V1_HUB_ID, load_diffusion
from anomaly_bench.models.components.synthesis import FOREGROUND_MODES, AnomalySynthesizer, foreground_mask
from anomaly_bench.models.glad.dino import DINO_VITB8, DinoFeatures, build_vit
from anomaly_bench.models.glad.scoring import smooth_object_mask
from anomaly_bench.models.glad.torch_model import GLADModel
from anomaly_bench.types import AnomalyOutput, Batch

log = logging.getLogger(__name__)

CATEGORY_KEYS = ("t_start", "tau", "t_min", "noise_offset", "pixel_l1_weight")
TAU_MODES = ("calibrate", "table")
CALIBRATION_CHECKPOINT_KEY = "glad_calibrated_tau"


class GLAD(AnomalyModule):
    """GLAD (Yao et al., ECCV 2024): global and local adaptive diffusion reconstruction.

    Reconstruction: Stable Diffusion v1-4 through diffusers (``diffusion`` = hub id or local folder;
    ``"tiny"`` = small random-init UNet on pixels for tests and demos; ``"sd-v1-random"`` = the SD
    architecture with random weights, with ``dino_pretrained=False`` for speed checks), UNet fine-tuned with ATP,
    VAE and text encoder frozen. Inference: DDIM from T_start with K steps, ADS stop rule, SAFF,
    classifier-free guidance. Scoring: DINO ViT-B/8 global nearest-neighbour maps. See README.md.

    Per-category inference hyper-parameters come from ``category_params`` ({category: {t_start, tau,
    t_min, noise_offset, pixel_l1_weight}}), falling back to the scalar arguments. ``tau_mode``:
      * ``"calibrate"`` (clean default): at the end of fit, τ per category is the ``tau_quantile``
        quantile, over up to ``calibration_images`` training normals, of each image's largest ADS
        distance before its search ends (i.e. τ that normal images rarely exceed). Stored in the
        checkpoint. Categories without a calibration fall back to the table / ``tau`` (warned once).
      * ``"table"``: τ from ``category_params`` / ``tau`` (the paper's tables: tuned on test data).
    """

    input_normalization = "minus_one_one"
    default_image_size = 512

    def __init__(
        self,
        diffusion: str = SD_V1_HUB_ID,
        prompt: str = "a photo of sks",
        use_vae: bool = True,
        tiny_vae: bool = False,
        tiny_image_size: int = 32,
        unet_width: int = 32,
        dino: str = DINO_VITB8,
        dino_weights: str | None = None,
        dino_pretrained: bool = True,
        dino_resolution: int = 512,
        score_layers: tuple[int, ...] = (3, 6, 9, 12),
        ads_layer: int = 12,
        ads_top_k: int = 10,
        score_top_k: int = 250,
        blur_sigma: float = 6.0,
        guidance_scale: float = 9.0,
        num_inference_steps: int = 25,
        t_start: int = 750,
        tau: float = 0.4,
        t_min: int = 350,
        noise_offset: int = 0,
        pixel_l1_weight: float = 0.0,
        category_params: dict[str, dict[str, float]] | None = None,
        tau_mode: str = "calibrate",
        tau_quantile: float = 0.95,
        calibration_images: int = 16,
        use_ads: bool = True,
        use_saff: bool = True,
        bidirectional_categories: list[str] | None = None,
        object_masks: dict[str, str] | None = None,
        foreground: dict[str, str] | None = None,
        texture_dir: str | None = None,
        anomaly_prob: float = 0.5,
        texture_prob: float = 0.5,
        lr: float = 5e-6,
        weight_decay: float = 1e-2,
        grad_clip: float = 1.0,
        gradient_checkpointing: bool = False,
        atp_sign: str = "+",
        inference_seed: int = 0,
        evaluator: Callback | bool = True,
        visualizer: Callback | bool = True,
    ) -> None:
        super().__init__(evaluator=evaluator, visualizer=visualizer)
        self.save_hyperparameters(ignore=["evaluator", "visualizer"])
        if tau_mode not in TAU_MODES:
            raise ValueError(f"GLAD tau_mode must be one of {TAU_MODES}, got {tau_mode!r}")
        if not 0.0 < tau_quantile <= 1.0:
            raise ValueError(f"GLAD tau_quantile must be in (0, 1], got {tau_quantile}")
        self.category_params = _validate_category_params(category_params or {})
        for name, table in (("object_masks", object_masks or {}), ("foreground", foreground or {})):
            for category, mode in table.items():
                if mode not in FOREGROUND_MODES:
                    raise ValueError(f"GLAD {name}[{category!r}] = {mode!r}; expected one of {FOREGROUND_MODES}")
        self.object_masks = dict(object_masks or {})
        self.foreground = dict(foreground or {})
        self.bidirectional_categories = set(bidirectional_categories or [])

        parts = load_diffusion(diffusion, prompt=prompt, use_vae=use_vae, image_size=tiny_image_size,
                               tiny_vae=tiny_vae, unet_width=unet_width)
        if gradient_checkpointing:
            parts.unet.enable_gradient_checkpointing()
        features = DinoFeatures(build_vit(dino, dino_weights, tiny_image_size, pretrained=dino_pretrained))
        self.model = GLADModel(
            parts, features, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            score_layers=tuple(score_layers), ads_layer=ads_layer, ads_top_k=ads_top_k, score_top_k=score_top_k,
            dino_resolution=dino_resolution, blur_sigma=blur_sigma, atp_sign=atp_sign,
        )
        self.synthesizer = AnomalySynthesizer(texture_dir, anomaly_prob=anomaly_prob, texture_prob=texture_prob)
        self.calibrated_tau: dict[str, float] = {}
        self._reservoir: dict[str, dict[str, Tensor]] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ hyper-parameter tables
    def params_for(self, category: str | None, with_calibration: bool = True) -> dict[str, float]:
        """Inference hyper-parameters of one category (table entry over the scalar defaults)."""
        hp = self.hparams
        params: dict[str, float] = dict(t_start=hp.t_start, tau=hp.tau, t_min=hp.t_min,
                                        noise_offset=hp.noise_offset, pixel_l1_weight=hp.pixel_l1_weight)
        if category is not None:
            params.update(self.category_params.get(category, {}))
        if hp.tau_mode == "calibrate" and with_calibration:
            key = category if category is not None else _single(self.calibrated_tau)
            if key is not None and key in self.calibrated_tau:
                params["tau"] = self.calibrated_tau[key]
            elif str(key) not in self._warned:
                self._warned.add(str(key))
                log.warning("GLAD: no calibrated tau for category %r yet; using the table/default tau %.3f",
                            key, params["tau"])
        return params

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images = batch.image
        modes = [self.foreground.get(c, "none") for c in batch.category]
        synthetic = self.synthesizer((images.detach() + 1) / 2, modes).images * 2 - 1
        loss = self.model.training_loss(images, synthetic)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        if self.hparams.tau_mode == "calibrate":
            self._remember_normals(batch)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Official: bitsandbytes 8-bit AdamW, constant lr, no warm-up; torch AdamW here (README).
        return torch.optim.AdamW(self.model.unet.parameters(), lr=self.hparams.lr, betas=(0.9, 0.999),
                                 weight_decay=self.hparams.weight_decay, eps=1e-8)

    def default_gradient_clip_norm(self) -> float | None:
        # official: clip 1.0; trainer.gradient_clip_val wins when set
        return self.hparams.grad_clip

    # -------------------------------------------------------------------------- calibration
    def _remember_normals(self, batch: Batch) -> None:
        """Keep up to ``calibration_images`` clean training images per category (uint8, CPU)."""
        limit = self.hparams.calibration_images
        for image, category, path in zip(batch.image, batch.category, batch.path):
            store = self._reservoir.setdefault(category, {})
            if path in store or len(store) < limit:
                store[path] = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def _is_final_epoch(self) -> bool:
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch + 1 >= trainer.max_epochs:
            return True
        return bool(trainer.should_stop)

    def on_train_epoch_end(self) -> None:
        if self.hparams.tau_mode == "calibrate" and self._reservoir and self._is_final_epoch():
            self.calibrate_tau({c: torch.stack(list(s.values())) for c, s in self._reservoir.items()})

    def on_fit_end(self) -> None:
        missing = {c: s for c, s in self._reservoir.items() if c not in self.calibrated_tau}
        if self.hparams.tau_mode == "calibrate" and missing:
            self.calibrate_tau({c: torch.stack(list(s.values())) for c, s in missing.items()})

    @torch.no_grad()
    def calibrate_tau(self, normals_by_category: dict[str, Tensor], batch_size: int = 8) -> dict[str, float]:
        """Set τ per category from normal images ([N, 3, H, W], uint8 0..255 or float in [-1, 1])."""
        was_training = self.training
        self.eval()
        # the same autocast as the test steps, so calibrated and tested distances are comparable
        precision = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        with precision.forward_context() if precision is not None else contextlib.nullcontext():
            self._calibrate(normals_by_category, batch_size)
        self.train(was_training)
        return dict(self.calibrated_tau)

    def _calibrate(self, normals_by_category: dict[str, Tensor], batch_size: int) -> None:
        for category, images in normals_by_category.items():
            if images.dtype == torch.uint8:
                images = images.float() / 127.5 - 1
            params = self.params_for(category, with_calibration=False)  # τ itself is not used here
            peaks = []
            for chunk in images.split(batch_size):
                chunk = chunk.to(self.device)
                n = chunk.shape[0]
                recon = self.model.reconstruct(
                    chunk, int(params["t_start"]), torch.full((n,), math.inf), torch.full((n,), int(params["t_min"])),
                    use_ads=True, use_saff=self.hparams.use_saff, noise_offset=int(params["noise_offset"]),
                    generator=torch.Generator().manual_seed(self.hparams.inference_seed), record_scores=True,
                )
                trace = torch.stack(recon.ads.score_trace)  # [steps, n]
                peaks.append(torch.nan_to_num(trace, nan=-math.inf).amax(dim=0).cpu())
            values = torch.cat(peaks)
            self.calibrated_tau[category] = float(torch.quantile(values, self.hparams.tau_quantile))
            log.info("GLAD: calibrated tau[%s] = %.4f on %d normal images", category,
                     self.calibrated_tau[category], len(values))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CALIBRATION_CHECKPOINT_KEY] = dict(self.calibrated_tau)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.calibrated_tau = dict(checkpoint.get(CALIBRATION_CHECKPOINT_KEY, {}))

    # ---------------------------------------------------------------------------- inference
    def forward(self, images: Tensor) -> AnomalyOutput:
        """Inference without categories: the scalar defaults (or the single calibrated τ)."""
        return self._score(images, [None] * images.shape[0])

    def score_batch(self, batch: Batch) -> AnomalyOutput:
        """GLAD needs the category: T_start / τ / t_min / pixel weight are per-class tables."""
        return self._score(batch.image, list(batch.category))

    @torch.no_grad()
    def _score(self, images: Tensor, categories: list[str | None]) -> AnomalyOutput:
        params = [self.params_for(c) for c in categories]
        generator = torch.Generator().manual_seed(self.hparams.inference_seed)
        recon = torch.empty_like(images, dtype=torch.float32)
        stop_steps = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):  # images sharing T_start share one batched trajectory
            groups.setdefault((int(p["t_start"]), int(p["noise_offset"])), []).append(i)
        for (t_start, offset), members in groups.items():
            idx = torch.tensor(members, device=images.device)
            tau = torch.tensor([float(params[i]["tau"]) for i in members])
            t_min = torch.tensor([int(params[i]["t_min"]) for i in members])
            result = self.model.reconstruct(images[idx], t_start, tau, t_min, self.hparams.use_ads,
                                            self.hparams.use_saff, offset, generator)
            recon[idx] = result.images
            stop_steps[idx] = result.ads.stop_step
        self.last_stop_steps = stop_steps
        weights = torch.tensor([float(p["pixel_l1_weight"]) for p in params], device=images.device)
        bidirectional = torch.tensor([c in self.bidirectional_categories for c in categories], device=images.device)
        maps = self.model.anomaly_map(images, recon, weights, bidirectional, self._object_mask(images, categories))
        return AnomalyOutput(anomaly_map=maps, pred_score=self.model.image_score(maps))

    def _object_mask(self, images: Tensor, categories: list[str | None]) -> Tensor | None:
        modes = [self.object_masks.get(c, "none") if c is not None else "none" for c in categories]
        if all(m == "none" for m in modes):
            return None
        masks = torch.stack([foreground_mask((img + 1) / 2, m) for img, m in zip(images, modes)])
        return smooth_object_mask(masks, self.hparams.blur_sigma)


def _single(table: dict[str, float]) -> str | None:
    return next(iter(table)) if len(table) == 1 else None


def _validate_category_params(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    if not isinstance(table, dict):
        raise ValueError(f"GLAD category_params must be a mapping category -> {{{', '.join(CATEGORY_KEYS)}}}")
    for category, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"GLAD category_params[{category!r}] must be a mapping, got {type(entry).__name__}")
        unknown = set(entry) - set(CATEGORY_KEYS)
        if unknown:
            raise ValueError(f"GLAD category_params[{category!r}] has unknown keys {sorted(unknown)}; "
                             f"allowed: {list(CATEGORY_KEYS)}")
    return {c: dict(e) for c, e in table.items()}
