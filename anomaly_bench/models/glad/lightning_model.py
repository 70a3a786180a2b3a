"""GLAD training glue (Lightning): ATP with synthetic anomalies, the optimiser, τ calibration on normals.

Official defaults (hyao1/GLAD, see README.md): AdamW (8-bit in the official code) at a constant
5e-6, β (0.9, 0.999), weight decay 1e-2, gradient-norm clip 1.0, gradient checkpointing. Inference,
the per-category tables and the calibrated τ values belong to ``GLADModel``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.synthesis import AnomalySynthesizer
from anomaly_bench.models.glad.dino_finetune import FINETUNE_PAIRS, FinetunePairs, finetune_scoring_dino
from anomaly_bench.models.glad.torch_model import ForegroundMode, GLADModel, validate_foreground_modes
from anomaly_bench.types import AnomalyOutput, Batch

log = logging.getLogger(__name__)

# version 0.1 stored the calibrated τ values under this checkpoint key; they now live in the
# torch model's state dict ("model._extra_state")
CALIBRATION_CHECKPOINT_KEY = "glad_calibrated_tau"
EXTRA_STATE_KEY = "model._extra_state"


class GLAD(AnomalyModule):
    """GLAD (Yao et al., ECCV 2024): global and local adaptive diffusion reconstruction.

    Architecture, inference and the per-category tables are options of ``GLADModel`` (passed
    through ``**model_options``); the options here only shape training and τ calibration.

    ``tau_mode``:
      * ``calibrate`` (default): at the end of fit, τ per category is the ``tau_quantile``
        quantile, over up to ``calibration_images`` training normals, of each image's largest ADS
        distance before its search ends (a level normal images rarely exceed). Stored in the torch
        model's state; categories without a calibration use the table / default τ (warned once).
      * ``table``: τ from ``category_params`` / ``tau`` (the official tables: tuned on test data);
        calibrated values a checkpoint may hold are ignored.

    Args:
        lr: learning rate of the UNet (official 5e-6, constant, no warm-up).
        weight_decay: AdamW weight decay of the UNet (official 1e-2).
        grad_clip_norm: global gradient-norm clip (official 1.0); ``trainer.gradient_clip_val`` wins.
        gradient_checkpointing: recompute UNet activations in the backward pass (less memory, slower).
        texture_dir: folder of anomaly textures (e.g. DTD images); None uses the image's own
            shuffled tiles as the anomaly source.
        anomaly_prob: probability that a training image gets a synthetic anomaly (official 0.5).
        texture_prob: probability that an anomaly's source is a texture rather than shuffled tiles
            (official 0.5; needs ``texture_dir``).
        foreground: ``{category: otsu | otsu_inverted | none}``: where synthetic anomalies may be
            placed (an Otsu foreground of the image); unlisted categories use the whole image.
        tau_mode: where τ comes from: ``calibrate`` (measured on training normals at the end of
            fit) or ``table`` (``category_params`` / ``tau``, the official test-tuned values).
        tau_quantile: the quantile of the normals' peak ADS distances that becomes τ (0 < q <= 1).
        calibration_images: training normals kept per category for the τ calibration.
        dino_finetune_epochs: epochs of fine-tuning the scoring DINO on pairs of a training normal
            and its reconstruction at the end of fit (``dino_finetune.py``; official: 15 for VisA and
            PCB-Bank, none for MVTec AD / MPDD); 0 switches it off. With fine-tuning, ADS gets a frozen
            copy of the original DINO (without, ADS and scoring share one).
        dino_finetune_lr: Adam learning rate of that fine-tuning (official 3e-4).
        dino_finetune_anchor: weight λ of the term that keeps the fine-tuned features near the
            original DINO's (official 0.01).
        dino_finetune_batch_size: pairs per fine-tuning step (official 16, with 2 accumulated).
        dino_finetune_pairs: ``reconstruction`` (a normal image and its reconstruction without ADS)
            or ``noised_input`` (the input noised to the start step and decoded: what the official
            helper produces as released).
        dino_finetune_start: the diffusion step the pairs start from; None uses each category's
            t_min (official: 200, its test t_min).
        dino_finetune_images: training normals kept per category for the fine-tuning (None: all of
            them, as the official code; they are kept as uint8 on the CPU).
        **model_options: the options of ``GLADModel`` (diffusion, DINO, ADS, scoring, the
            per-category tables, object masks, seed).
    """

    input_normalization = "minus_one_one"
    default_image_size = 512
    option_renames: ClassVar[dict[str, str]] = {"grad_clip": "grad_clip_norm"}

    def __init__(
        self,
        lr: float = 5e-6,
        weight_decay: float = 1e-2,
        grad_clip_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        texture_dir: str | None = None,
        anomaly_prob: float = 0.5,
        texture_prob: float = 0.5,
        foreground: dict[str, ForegroundMode] | None = None,
        tau_mode: Literal["calibrate", "table"] = "calibrate",
        tau_quantile: float = 0.95,
        calibration_images: int = 16,
        dino_finetune_epochs: int = 0,
        dino_finetune_lr: float = 3e-4,
        dino_finetune_anchor: float = 0.01,
        dino_finetune_batch_size: int = 16,
        dino_finetune_pairs: FinetunePairs = "reconstruction",
        dino_finetune_start: int | None = None,
        dino_finetune_images: int | None = 200,
        **model_options: Any,
    ) -> None:
        super().__init__()
        if tau_mode not in ("calibrate", "table"):
            raise ValueError(f"GLAD tau_mode must be 'calibrate' or 'table', got {tau_mode!r}")
        if not 0.0 < tau_quantile <= 1.0:
            raise ValueError(f"GLAD tau_quantile must be in (0, 1], got {tau_quantile}")
        if dino_finetune_pairs not in FINETUNE_PAIRS:
            raise ValueError(f"GLAD dino_finetune_pairs must be one of {FINETUNE_PAIRS}, got {dino_finetune_pairs!r}")
        if dino_finetune_epochs < 0 or dino_finetune_batch_size < 1 or (dino_finetune_images is not None
                                                                        and dino_finetune_images < 1):
            raise ValueError("GLAD dino_finetune_epochs must be >= 0, dino_finetune_batch_size and dino_finetune_images "
                             f">= 1; got {dino_finetune_epochs}, {dino_finetune_batch_size}, {dino_finetune_images}")
        self.save_hyperparameters()
        self.foreground = validate_foreground_modes(foreground, "foreground")
        self.model = GLADModel(**model_options)
        self.model.table.use_calibrated_tau = tau_mode == "calibrate"
        if dino_finetune_epochs > 0:
            self.model.separate_ads_dino()  # before any checkpoint loads: its state holds both DINOs
        if gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        self.synthesizer = AnomalySynthesizer(texture_dir, anomaly_prob=anomaly_prob, texture_prob=texture_prob)
        self._reservoir: dict[str, dict[str, Tensor]] = {}
        self._finished_this_fit = False

    @property
    def calibrated_tau(self) -> dict[str, float]:
        """τ per category measured on normals (held by the torch model)."""
        return self.model.table.calibrated_tau

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images = batch.image
        modes = [self.foreground.get(c, "none") for c in batch.category]
        synthetic = self.synthesizer((images.detach() + 1) / 2, modes).images * 2 - 1
        loss = self.model.training_loss(images, synthetic)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        if self._reservoir_size():
            self._remember_normals(batch)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Official: bitsandbytes 8-bit AdamW, constant lr, no warm-up; torch AdamW here (README).
        return torch.optim.AdamW(self.model.unet.parameters(), lr=self.hparams.lr, betas=(0.9, 0.999),
                                 weight_decay=self.hparams.weight_decay, eps=1e-8)

    def default_gradient_clip_norm(self) -> float | None:
        return self.hparams.grad_clip_norm

    # -------------------------------------------------------------------------- calibration
    def _reservoir_size(self) -> float:
        """Training normals to keep per category: for τ calibration and for the DINO fine-tuning
        (inf: all of them)."""
        hp = self.hparams
        finetune = 0 if hp.dino_finetune_epochs <= 0 else \
            float("inf") if hp.dino_finetune_images is None else hp.dino_finetune_images
        return max(hp.calibration_images if hp.tau_mode == "calibrate" else 0, finetune)

    def _remember_normals(self, batch: Batch) -> None:
        """Keep the first ``_reservoir_size()`` clean training images per category (uint8, CPU)."""
        limit = self._reservoir_size()
        for image, category, path in zip(batch.image, batch.category, batch.path):
            store = self._reservoir.setdefault(category, {})
            if path in store or len(store) < limit:
                store[path] = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def _is_final_epoch(self) -> bool:
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs:
            return True
        return bool(trainer.should_stop)

    def on_validation_start(self) -> None:
        # Lightning validates (and the checkpoint callback saves last.ckpt) *before*
        # on_train_epoch_end: finish here at the last epoch, so validation and the saved checkpoint
        # both have the calibrated τ and the fine-tuned scoring DINO.
        trainer = self.trainer
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._is_final_epoch():
            self._finish_fit()

    def on_train_epoch_end(self) -> None:
        if self._is_final_epoch():
            self._finish_fit()

    def _kept_normals(self, limit: int | None = None) -> dict[str, Tensor]:
        return {c: torch.stack(list(s.values())[:limit]) for c, s in self._reservoir.items() if s}

    def _finish_fit(self) -> None:
        """Once per fit, at its last epoch: fine-tune the scoring DINO, then calibrate τ, both on
        the kept training normals (τ is read by the original DINO inside ADS, so the order only
        matters for what validation sees)."""
        if self._finished_this_fit or not self._reservoir:
            return
        hp = self.hparams
        if hp.dino_finetune_epochs > 0:
            finetune_scoring_dino(self.model, self._kept_normals(hp.dino_finetune_images), hp.dino_finetune_epochs,
                                  lr=hp.dino_finetune_lr, anchor_weight=hp.dino_finetune_anchor,
                                  batch_size=hp.dino_finetune_batch_size, pairs=hp.dino_finetune_pairs,
                                  start_step=hp.dino_finetune_start, seed=self.model.inference_seed,
                                  pair_context=self._test_precision)
        if hp.tau_mode == "calibrate":
            self.calibrate_tau(self._kept_normals(hp.calibration_images))
        self._finished_this_fit = True

    def on_fit_end(self) -> None:
        if not self._finished_this_fit:  # a fit that ended before any "final epoch" hook ran
            self._finish_fit()
        missing = {c: s for c, s in self._kept_normals(self.hparams.calibration_images).items()
                   if c not in self.calibrated_tau}
        if self.hparams.tau_mode == "calibrate" and missing:
            self.calibrate_tau(missing)

    def _test_precision(self) -> contextlib.AbstractContextManager:
        """The trainer's precision context (autocast) that test steps run in; none without a trainer."""
        precision = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        return precision.forward_context() if precision is not None else contextlib.nullcontext()

    @torch.no_grad()
    def calibrate_tau(self, normals_by_category: dict[str, Tensor], batch_size: int = 8) -> dict[str, float]:
        """Set τ per category from normal images ([N, 3, H, W], uint8 0..255 or float in [-1, 1])."""
        was_training = self.training
        self.eval()
        # the same autocast as the test steps, so calibrated and tested distances are comparable
        with self._test_precision():
            for category, images in normals_by_category.items():
                self.calibrated_tau[category] = self._calibrated_value(category, images, batch_size)
        self.train(was_training)
        return dict(self.calibrated_tau)

    def _calibrated_value(self, category: str, images: Tensor, batch_size: int) -> float:
        if images.dtype == torch.uint8:
            images = images.float() / 127.5 - 1
        peaks = [self.model.ads_peak_scores(chunk.to(self.device), category,
                                            torch.Generator().manual_seed(self.model.inference_seed)).cpu()
                 for chunk in images.split(batch_size)]
        values = torch.cat(peaks)
        tau = float(torch.quantile(values, self.hparams.tau_quantile))
        log.info("GLAD: calibrated tau[%s] = %.4f on %d normal images", category, tau, len(values))
        return tau

    # --------------------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # option and state-dict renames of version 0.1
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            self._match_ads_dino(state)
        legacy_tau = checkpoint.pop(CALIBRATION_CHECKPOINT_KEY, None)
        if isinstance(state, dict) and EXTRA_STATE_KEY not in state:
            # version 0.1: the tables came from the options only, τ from its own checkpoint key, and
            # the reconstruction was clamped to [-1, 1] before scoring; keep scoring as it did
            extra = self.model.get_extra_state()
            extra["calibrated_tau"] = {str(c): float(v) for c, v in (legacy_tau or {}).items()}
            extra["clamp_reconstruction"] = True
            state[EXTRA_STATE_KEY] = extra
            self.model.clamp_reconstruction = True
            self.hparams["clamp_reconstruction"] = True  # a re-saved checkpoint says what it does
            log.info("GLAD: version 0.1 checkpoint: the reconstruction is clamped before scoring as in 0.1 "
                     "(the official code scores it raw: set model.clamp_reconstruction = False after loading)")

    def _match_ads_dino(self, state: dict[str, Any]) -> None:
        """A checkpoint whose scoring DINO was fine-tuned holds a separate ADS DINO; one that was not
        holds only the original: load either, whatever ``dino_finetune_epochs`` says now."""
        prefix, source = "model.frozen_ads_dino.", "model.dino."
        saved_separate = any(k.startswith(prefix) for k in state)
        if saved_separate and self.model.frozen_ads_dino is None:
            self.model.separate_ads_dino()  # its weights come from the checkpoint next
        elif not saved_separate and self.model.frozen_ads_dino is not None:
            state.update({prefix + k[len(source):]: v for k, v in list(state.items()) if k.startswith(source)})

    # ---------------------------------------------------------------------------- inference
    def score_batch(self, batch: Batch) -> AnomalyOutput:
        """GLAD needs the category: T_start / τ / t_min / pixel weight are per-class tables."""
        return self.model(batch.image, list(batch.category))
