"""PatchDiffGRAD: the whole pipeline of paper 003 inside one ``anomaly-bench fit``.

Training is a fixed sequence of phases, per category (sorted by name):

    generator:<level>  train one PatchDiff per level (skipped when its samples already exist)
    sample:<level>     draw ``samples_per_level`` images into <run dir>/generated/<category>/level_<n>/
    detectors          train every detector of the category together, one step each per tick
    stats              per-detector statistics on training normals, for fusing several maps

The training dataloader only supplies the normal training images: they are read once at the
start of fit into a uint8 bank per category (that also rebuilds it after a resume), and each
``training_step`` is a *tick* that performs ``inner_steps`` optimisation steps of the current
phase. The phase index and step are buffers, so a checkpoint resumes the right phase; when the
last phase ends the module sets ``trainer.should_stop``. Optimisation is manual: every
generator and detector owns an AdamW whose one-cycle learning rate is set per step.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.patchdiff import storage
from anomaly_bench.models.patchdiff.patches import augment, make_patch_batch, resolve_augmentation
from anomaly_bench.models.patchdiff.regularizers import feature_regularizer, gradient_penalty
from anomaly_bench.models.patchdiff.reweighting import reweight, reweighted_bce
from anomaly_bench.models.patchdiff.schedule import one_cycle_lr
from anomaly_bench.models.patchdiff.torch_model import (
    FUSIONS,
    IMAGE_SCORES,
    PAPER_DETECTORS_MVTEC,
    DetectorSpec,
    PatchDiffGRADModel,
    resize,
)
from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch

log = logging.getLogger(__name__)

PHASE_GENERATOR, PHASE_SAMPLE, PHASE_DETECTORS, PHASE_STATS = "generator", "sample", "detectors", "stats"


def _module_key(category: str) -> str:
    """ModuleDict keys may not contain dots; category names keep their meaning otherwise."""
    return re.sub(r"[^0-9A-Za-z_\-]", "_", category) or "_"


class PatchDiffGRAD(AnomalyModule):
    """PatchDiff GRAD (Dai et al., AAAI 2024). Every default is the paper's value or, where the
    paper is silent, our documented choice (see ``anomaly_bench/models/patchdiff/README.md``).

    Args (grouped):
        detectors: list of ``{input_size, levels, name}``; default the MVTec AD setting (one
            level-34 detector at 256 px with PatchDiff levels 5, 9, 13). LOCO: three detectors.
        categories: category names to build models for; None = the datamodule's categories.
        generator_*: PatchDiff width, image size (None = data size), steps, batch, optimiser,
            optional random-crop training (exact for a local model up to border effects),
            octaves of the Fourier encoding of the coordinate map (0 = the raw map).
        num_train_timesteps, beta_*: the DDPM schedule (diffusers ``DDPMScheduler``).
        global_noise_std: sigma_g of the per-image colour offset added to the noised input.
        sampler / sampling_steps: ``ddpm`` (ancestral, T steps) or ``ddim``; samples_per_level.
        generated_dir: where samples go; None = ``<trainer.default_root_dir>/generated``.
        detector_width: 1.0 = the paper's Table 8 network; smaller only for CPU tests/demos.
        detector_steps / detector_epochs: detector length; epochs count passes over the normal
            images in groups of ``images_per_group`` (paper: 2000 epochs).
        images_per_group, patches_per_image: 4 images x 32 patches = 128 patches per kind.
        beta_density, memory_bank_size, noisy/tail_reweighting, feature_regularizer,
            gradient_penalty, alpha_feat, alpha_grad, dae_*_noise: the detector's loss.
        augmentations: per-category overrides of the paper's Tables 5-6 (``default`` key too).
        blur_sigma, fusion, image_score: scoring.
        inner_steps: optimisation steps per dataloader batch (fewer epochs, fewer checkpoints).
    """

    input_normalization = "minus_one_one"  # PatchDiff and the detectors both work in [-1, 1]
    default_image_size = 256

    def __init__(
        self,
        detectors: list[dict[str, Any]] | None = None,
        categories: list[str] | None = None,
        generator_channels: int = 64,
        generator_image_size: int | None = None,
        generator_steps: int = 10_000,
        generator_batch_size: int = 16,
        generator_lr: float = 1e-3,
        generator_weight_decay: float = 1e-4,
        generator_crop_size: int | None = None,
        generator_coord_frequencies: int = 6,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        global_noise_std: float = 0.02,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        sampling_steps: int | None = None,
        samples_per_level: int = 1000,
        sampling_batch_size: int = 50,
        generated_dir: str | None = None,
        detector_width: float = 1.0,
        detector_steps: int | None = None,
        detector_epochs: float = 2000.0,
        images_per_group: int = 4,
        patches_per_image: int = 32,
        detector_lr: float = 1e-3,
        detector_weight_decay: float = 1e-4,
        memory_bank_size: int = 512,
        beta_density: float = 5.0,
        noisy_reweighting: bool = True,
        tail_reweighting: bool = True,
        feature_regularizer: bool = True,
        gradient_penalty: bool = True,
        alpha_feat: float = 1.0,
        alpha_grad: float = 0.1,
        dae_input_noise: float = 0.1,
        dae_feature_noise: float = 0.1,
        augmentations: dict[str, dict[str, Any]] | None = None,
        blur_sigma: float = 4.0,
        fusion: Literal["pixel_standardized_sum", "standardized_sum", "sum"] = "pixel_standardized_sum",
        image_score: Literal["sum_of_max", "max_of_map"] = "max_of_map",
        inner_steps: int = 1,
        evaluator: Callback | bool = True,
        visualizer: Callback | bool = True,
    ) -> None:
        super().__init__(evaluator=evaluator, visualizer=visualizer)
        self.save_hyperparameters(ignore=["evaluator", "visualizer"])
        self.automatic_optimization = False
        specs = detectors if detectors is not None else [vars(s).copy() for s in PAPER_DETECTORS_MVTEC]
        self.detector_specs = [DetectorSpec.parse(s, f"model.detectors[{i}]") for i, s in enumerate(specs)]
        self._check_args()
        self.category_models = torch.nn.ModuleDict()
        self.categories: list[str] = []
        # phase_progress = (phase index, step inside the phase): restored with the state dict.
        self.register_buffer("phase_progress", torch.zeros(2, dtype=torch.long))
        if categories:
            self._build(list(categories))
        self._normal_bank: dict[str, Tensor] = {}
        self._detector_data: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------- construction
    def _check_args(self) -> None:
        hp = self.hparams
        positive = ["generator_channels", "generator_steps", "generator_batch_size", "samples_per_level",
                    "sampling_batch_size", "images_per_group", "patches_per_image", "memory_bank_size",
                    "inner_steps", "num_train_timesteps"]
        for name in positive:
            if int(hp[name]) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {hp[name]}")
        if hp.beta_density <= 0:
            raise ValueError(f"model.beta_density must be > 0 (kernel bandwidth), got {hp.beta_density}")
        if hp.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"model.sampler must be 'ddpm' or 'ddim', got {hp.sampler!r}")
        if hp.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {hp.fusion!r}")
        if hp.image_score not in IMAGE_SCORES:
            raise ValueError(f"model.image_score must be one of {IMAGE_SCORES}, got {hp.image_score!r}")
        if int(hp.generator_coord_frequencies) < 0:
            raise ValueError(f"model.generator_coord_frequencies must be >= 0, got {hp.generator_coord_frequencies}")
        if hp.detector_steps is not None and hp.detector_steps < 1:
            raise ValueError(f"model.detector_steps must be >= 1 or null, got {hp.detector_steps}")

    def _build(self, categories: list[str]) -> None:
        hp = self.hparams
        gen_kwargs = dict(num_train_timesteps=hp.num_train_timesteps, beta_schedule=hp.beta_schedule,
                          beta_start=hp.beta_start, beta_end=hp.beta_end, global_noise_std=hp.global_noise_std,
                          coord_frequencies=hp.generator_coord_frequencies)
        keys = [_module_key(c) for c in categories]
        if len(set(keys)) != len(keys):
            raise ValueError(f"category names {categories} collide after sanitising to module keys {keys}")
        self.categories = sorted(categories)
        for category in self.categories:
            self.category_models[_module_key(category)] = PatchDiffGRADModel(
                self.detector_specs, hp.generator_channels, gen_kwargs, hp.memory_bank_size, hp.detector_width)

    def setup(self, stage: str) -> None:
        if self.categories:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        categories = list(getattr(datamodule, "categories", None) or [])
        if not categories:
            raise ValueError("PatchDiffGRAD needs its categories: set model.categories or use a datamodule "
                             "whose 'categories' property lists them after setup")
        self._build(categories)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["patchdiff_categories"] = list(self.categories)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("patchdiff_categories")
        if saved and not self.categories:
            self._build(list(saved))
        elif saved and sorted(saved) != self.categories:
            raise ValueError(f"checkpoint was trained on categories {sorted(saved)}, this model has {self.categories}")
        self._fill_missing_pixel_stats(checkpoint.get("state_dict", {}))

    def _fill_missing_pixel_stats(self, state: dict[str, Tensor]) -> None:
        """Checkpoints written before per-location statistics existed load with neutral ones (0, 1)."""
        own = self.state_dict()
        missing = [name for name in own if ".pixel_stats_" in name and name not in state]
        for name in missing:
            state[name] = own[name].clone()
        if missing:
            log.warning("PatchDiffGRAD: checkpoint has no per-location statistics (%d buffers); "
                        "fusion 'pixel_standardized_sum' falls back to raw sums until they are recomputed",
                        len(missing))

    def model_for(self, category: str) -> PatchDiffGRADModel:
        key = _module_key(category)
        if key not in self.category_models:
            raise KeyError(f"PatchDiffGRAD has no model for category {category!r}; trained: {self.categories}")
        return self.category_models[key]

    def configure_optimizers(self):
        hp = self.hparams
        optimizers = []
        for category in self.categories:
            model = self.model_for(category)
            for level in model.levels:
                optimizers.append(torch.optim.AdamW(model.generators[str(level)].parameters(),
                                                    lr=hp.generator_lr, weight_decay=hp.generator_weight_decay))
            for det, head in zip(model.detectors, model.dae_heads):
                params = list(det.parameters()) + list(head.parameters())
                optimizers.append(torch.optim.AdamW(params, lr=hp.detector_lr, weight_decay=hp.detector_weight_decay))
        return optimizers

    def _optimizer_index(self, category: str, kind: str, which: int) -> int:
        """Position of a generator (``which`` = level) or detector (``which`` = index) optimiser."""
        index = 0
        for cat in self.categories:
            model = self.model_for(cat)
            if cat == category:
                if kind == "generator":
                    return index + model.levels.index(which)
                return index + len(model.levels) + which
            index += len(model.levels) + len(model.detectors)
        raise KeyError(category)

    def _optimizer(self, index: int):
        opts = self.optimizers()
        return opts[index] if isinstance(opts, list) else opts

    # ------------------------------------------------------------------------------ the phases
    def phases(self) -> list[tuple[str, str, int]]:
        """(kind, category, level or -1) in execution order."""
        out: list[tuple[str, str, int]] = []
        for category in self.categories:
            levels = self.model_for(category).levels
            out += [(PHASE_GENERATOR, category, level) for level in levels]
            out += [(PHASE_SAMPLE, category, level) for level in levels]
            out += [(PHASE_DETECTORS, category, -1), (PHASE_STATS, category, -1)]
        return out

    @property
    def pipeline_done(self) -> bool:
        return int(self.phase_progress[0]) >= len(self.phases())

    def current_phase(self) -> tuple[str, str, int] | None:
        phases = self.phases()
        index = int(self.phase_progress[0])
        return phases[index] if index < len(phases) else None

    def _advance(self) -> None:
        self.phase_progress[0] += 1
        self.phase_progress[1] = 0
        nxt = self.current_phase()
        log.info("PatchDiffGRAD: next phase %s", nxt if nxt else "done")

    def generated_root(self) -> Path:
        if self.hparams.generated_dir:
            return Path(self.hparams.generated_dir)
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(root) / "generated"

    def detector_total_steps(self, category: str) -> int:
        hp = self.hparams
        if hp.detector_steps is not None:
            return int(hp.detector_steps)
        n_images = self._normal_bank[category].shape[0]
        return max(1, math.ceil(hp.detector_epochs * n_images / hp.images_per_group))

    # ------------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        self._collect_normal_images()
        if self.pipeline_done:
            self.trainer.should_stop = True

    @torch.no_grad()
    def _collect_normal_images(self) -> None:
        """Read the normal training images once (uint8, CPU, per category)."""
        loader = self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("PatchDiffGRAD needs a training dataloader of normal images")
        per_category: dict[str, list[Tensor]] = {c: [] for c in self.categories}
        for batch in loader:
            if not isinstance(batch, Batch):
                raise TypeError(f"PatchDiffGRAD expects anomaly_bench.types.Batch from the dataloader, got {type(batch)}")
            for image, label, category in zip(batch.image, batch.label, batch.category):
                if int(label) != LABEL_NORMAL:
                    continue
                if category not in per_category:
                    raise KeyError(f"training image of category {category!r}, but the model was built for {self.categories}")
                per_category[category].append(storage.to_uint8(image[None])[0])
        missing = [c for c, imgs in per_category.items() if not imgs]
        if missing:
            raise ValueError(f"no normal training images for categories {missing}")
        self._normal_bank = {c: torch.stack(imgs) for c, imgs in per_category.items()}

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        for _ in range(self.hparams.inner_steps):
            phase = self.current_phase()
            if phase is None:
                self.trainer.should_stop = True
                return None
            kind, category, level = phase
            if kind == PHASE_GENERATOR:
                self._generator_step(category, level)
            elif kind == PHASE_SAMPLE:
                self._sample(category, level)
                self._advance()
            elif kind == PHASE_DETECTORS:
                self._detector_step(category)
            else:
                self._fusion_stats(category)
                self._detector_data = None
                self._advance()
        self.log("train/phase", self.phase_progress[0].float(), prog_bar=True, batch_size=1)
        return None

    def _normal_batch(self, category: str, n: int, size: int | None) -> Tensor:
        bank = self._normal_bank[category]
        idx = torch.randint(0, bank.shape[0], (n,))
        images = storage.to_float(bank[idx], self.device)
        return resize(images, size) if size else images

    def _generator_step(self, category: str, level: int) -> None:
        hp = self.hparams
        if storage.count_complete(storage.level_dir(self.generated_root(), category, level),
                                  hp.samples_per_level) >= hp.samples_per_level:
            log.info("PatchDiffGRAD: samples for %s level %d exist; skipping its training", category, level)
            self._advance()
            return
        step = int(self.phase_progress[1])
        generator = self.model_for(category).generators[str(level)]
        optimizer = self._optimizer(self._optimizer_index(category, "generator", level))
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(step, hp.generator_steps, hp.generator_lr)
        x0 = self._normal_batch(category, hp.generator_batch_size, hp.generator_image_size)
        coords = None
        if hp.generator_crop_size and hp.generator_crop_size < x0.shape[-1]:
            from anomaly_bench.models.patchdiff.generator import coordinate_map
            from anomaly_bench.models.patchdiff.patches import random_crops

            full = torch.cat([x0, coordinate_map(*x0.shape[-2:], self.device).expand(x0.shape[0], -1, -1, -1)], 1)
            crops = random_crops(full, 1, hp.generator_crop_size)
            x0, coords = crops[:, :3], crops[:, 3:]
        loss = generator.training_loss(x0, coords)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train/generator_loss", loss.detach(), prog_bar=True, batch_size=x0.shape[0])
        self.phase_progress[1] += 1
        if int(self.phase_progress[1]) >= hp.generator_steps:
            self._advance()

    @torch.no_grad()
    def _sample(self, category: str, level: int) -> None:
        hp = self.hparams
        directory = storage.level_dir(self.generated_root(), category, level)
        done = storage.count_complete(directory, hp.samples_per_level)
        if done >= hp.samples_per_level:
            return
        size = hp.generator_image_size or int(self._normal_bank[category].shape[-1])
        height = size if hp.generator_image_size else int(self._normal_bank[category].shape[-2])
        generator_model = self.model_for(category).generators[str(level)]
        log.info("PatchDiffGRAD: sampling %d images of %s level %d into %s",
                 hp.samples_per_level - done, category, level, directory)
        for start in range(done, hp.samples_per_level, hp.sampling_batch_size):
            n = min(hp.sampling_batch_size, hp.samples_per_level - start)
            rng = torch.Generator(device=self.device)
            rng.manual_seed(zlib.crc32(f"{category}/{level}/{start}".encode()) + int(self.hparams.samples_per_level))
            images = generator_model.sample(n, height, size, hp.sampler, hp.sampling_steps, self.device, rng)
            storage.write_images(directory, start, images)

    def _load_detector_data(self, category: str) -> dict[str, Any]:
        """Normal and generated images resized once per detector (uint8, CPU)."""
        if self._detector_data is not None and self._detector_data["category"] == category:
            return self._detector_data
        hp = self.hparams
        model = self.model_for(category)
        generated = {level: storage.read_images(storage.level_dir(self.generated_root(), category, level),
                                                hp.samples_per_level) for level in model.levels}
        per_detector = []
        for spec in model.specs:
            def resized(images: Tensor) -> Tensor:
                out = [storage.to_uint8(resize(storage.to_float(images[i:i + 64], self.device), spec.input_size))
                       for i in range(0, images.shape[0], 64)]
                return torch.cat(out)
            per_detector.append({"normal": resized(self._normal_bank[category]),
                                 "generated": [resized(generated[level]) for level in spec.levels]})
        self._detector_data = {"category": category, "detectors": per_detector,
                               "augmentation": resolve_augmentation(category, hp.augmentations)}
        return self._detector_data

    def _detector_step(self, category: str) -> None:
        hp = self.hparams
        data = self._load_detector_data(category)
        model = self.model_for(category)
        step = int(self.phase_progress[1])
        total = self.detector_total_steps(category)
        lr = one_cycle_lr(step, total, hp.detector_lr)
        aug = data["augmentation"]
        for d, (spec, det) in enumerate(zip(model.specs, model.detectors)):
            source = data["detectors"][d]
            optimizer = self._optimizer(self._optimizer_index(category, "detector", d))
            for group in optimizer.param_groups:
                group["lr"] = lr

            def pick(images: Tensor, generated: bool) -> Tensor:
                idx = torch.randint(0, images.shape[0], (hp.images_per_group,))
                return augment(storage.to_float(images[idx], self.device), aug, generated)

            coords = model.detector_input(torch.zeros(1, 3, spec.input_size, spec.input_size,
                                                      device=self.device), spec)[0, 3:]
            patches = make_patch_batch(pick(source["normal"], False), pick(source["normal"], False),
                                       [pick(g, True) for g in source["generated"]], coords, hp.patches_per_image)
            losses = self.detector_losses(model, d, patches.positives, patches.negatives)
            optimizer.zero_grad()
            self.manual_backward(losses["loss"])
            optimizer.step()
            for name, value in losses.items():
                self.log(f"train/{spec.name}/{name}", value.detach(), batch_size=patches.positives.shape[0])
        self.phase_progress[1] += 1
        if int(self.phase_progress[1]) >= total:
            self._advance()

    def detector_losses(self, model: PatchDiffGRADModel, d: int, positives: Tensor,
                        negatives: Tensor) -> dict[str, Tensor]:
        """L = L_RBCE + alpha_1 L_feat + alpha_2 L_grad for detector ``d`` (Eq. 7), updating its banks."""
        hp = self.hparams
        detector, head = model.detectors[d], model.dae_heads[d]
        bank_pos, bank_neg = model.positive_banks[d], model.negative_banks[d]
        patches = torch.cat([positives, negatives], dim=0)
        features, logits = detector.forward_features(patches)
        features, logits = features.flatten(1), logits.flatten()
        n_pos = positives.shape[0]
        weights = reweight(features[:n_pos], features[n_pos:], bank_pos.features, bank_neg.features,
                           hp.beta_density, noisy=hp.noisy_reweighting, tail=hp.tail_reweighting)
        out = {"rbce": reweighted_bce(logits[:n_pos], logits[n_pos:], weights)}
        loss = out["rbce"]
        if hp.feature_regularizer and hp.alpha_feat > 0:
            out["feat"] = feature_regularizer(detector, head, patches, hp.dae_input_noise, hp.dae_feature_noise)
            loss = loss + hp.alpha_feat * out["feat"]
        if hp.gradient_penalty and hp.alpha_grad > 0:
            out["grad"] = gradient_penalty(detector, positives)
            loss = loss + hp.alpha_grad * out["grad"]
        bank_pos.push(features[:n_pos])
        bank_neg.push(features[n_pos:])
        out["loss"] = loss
        return out

    @torch.no_grad()
    def _fusion_stats(self, category: str) -> None:
        model = self.model_for(category)
        was_training = model.training
        model.eval()
        bank = self._normal_bank[category]
        images = torch.cat([storage.to_float(bank[i:i + 32], self.device) for i in range(0, bank.shape[0], 32)])
        model.compute_fusion_stats(images)
        model.train(was_training)

    def on_train_end(self) -> None:
        if not self.pipeline_done:
            log.warning("PatchDiffGRAD stopped before its pipeline finished (at phase %s); raise "
                        "trainer.max_epochs / inner_steps or resume from the last checkpoint", self.current_phase())

    # ------------------------------------------------------------------------------ inference
    def _score(self, category: str, images: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        return self.model_for(category)(images, hp.blur_sigma, hp.fusion, hp.image_score)

    def forward(self, images: Tensor) -> AnomalyOutput:
        if len(self.categories) != 1:
            raise ValueError(f"PatchDiffGRAD.forward needs a single-category model (has {self.categories}); "
                             "use score_batch(batch) so each image goes to its category's detectors")
        return AnomalyOutput(*self._score(self.categories[0], images))

    def score_batch(self, batch: Batch) -> AnomalyOutput:
        if len(self.categories) == 1:
            return self(batch.image)
        b, (h, w) = batch.image.shape[0], batch.image.shape[-2:]
        maps = batch.image.new_zeros(b, h, w)
        scores = batch.image.new_zeros(b)
        for category in sorted(set(batch.category)):
            idx = torch.tensor([i for i, c in enumerate(batch.category) if c == category], device=batch.image.device)
            m, s = self._score(category, batch.image[idx])
            maps[idx], scores[idx] = m.to(maps.dtype), s.to(scores.dtype)
        return AnomalyOutput(maps, scores)
