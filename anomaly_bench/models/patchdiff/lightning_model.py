"""PatchDiffGRAD: the whole pipeline of paper 003 inside one ``anomaly-bench fit`` (training glue).

Training runs the fixed sequence of phases of ``phases.py`` (generators -> samples -> detectors ->
statistics, per category) with manual optimisation: each ``training_step`` is a *tick* of
``inner_steps`` steps of the current phase, every generator and detector has its own AdamW (looked
up by name) whose one-cycle learning rate is set per step, and the module stops the trainer when the
last phase ends. The training dataloader is read once, at the start of fit, into a bank of normal
images per category (``training_data.py``). Inference is ``PatchDiffGRADModel``'s.
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.patchdiff import phases, storage
from anomaly_bench.models.patchdiff.generator import coordinate_map
from anomaly_bench.models.patchdiff.objective import DetectorObjective
from anomaly_bench.models.patchdiff.patches import (
    crops_with_coordinates,
    make_patch_batch,
    resolve_augmentation,
)
from anomaly_bench.models.patchdiff.phases import Phase, PhaseCursor
from anomaly_bench.models.patchdiff.reweighting import FeatureMemoryBank
from anomaly_bench.models.patchdiff.schedule import one_cycle_lr
from anomaly_bench.models.patchdiff.torch_model import PatchDiffGRADModel
from anomaly_bench.models.patchdiff.training_data import (
    CategoryTrainingImages,
    DetectorImages,
    collect_normal_images,
    detail_energy,
    draw_augmented,
    draw_images,
    match_detail,
    resized_uint8,
)
from anomaly_bench.types import AnomalyOutput, Batch

log = logging.getLogger(__name__)

# where torch keeps the categories of PatchDiffGRADModel (its get_extra_state) in our state dict
CATEGORIES_STATE_KEY = "model._extra_state"
# 0.1 checkpoints listed the categories under this top-level key
LEGACY_CATEGORIES_KEY = "patchdiff_categories"
# generated images with less of the normals' fine detail than this get a warning: at 0.70 (synthetic
# granite, demo config) the detector scored thin scratches lower than the texture around them
DETAIL_WARNING_RATIO = 0.85


def _set_lr(optimizer: LightningOptimizer | torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def sample_seed(category: str, level: int, start: int, samples_per_level: int) -> int:
    """Seed of the sampling chunk starting at image ``start``: a resumed run redraws exactly the same images."""
    return zlib.crc32(f"{category}/{level}/{start}".encode()) + int(samples_per_level)


class PatchDiffGRAD(AnomalyModule):
    """PatchDiff GRAD (Dai et al., AAAI 2024): generate contrastive images with local diffusion models,
    then train reweighted patch-level detectors. Every default is the paper's value or, where the
    paper is silent, our documented choice (``anomaly_bench/models/patchdiff/README.md``).

    The detectors, the generators' architecture and the scoring belong to ``PatchDiffGRADModel``
    (passed through ``**model_options``); the options here only shape training.

    Args:
        generator_image_size: side in pixels of the images each PatchDiff is trained on and samples;
            null = the data's size. The paper does not say (configs: 256).
        generator_steps: optimisation steps of each PatchDiff (paper: 10 000).
        generator_batch_size: images per PatchDiff step (the paper does not say; 16).
        generator_lr: peak one-cycle learning rate of the PatchDiff AdamW (paper: 1e-3).
        generator_weight_decay: AdamW weight decay of the PatchDiffs (paper: 1e-4).
        generator_crop_size: train each PatchDiff on one random crop of this size per image, with the
            crop's part of the full-image coordinate map (exact for a local model away from the
            borders, much cheaper); null = whole images.
        sampler: ``ddpm`` = ancestral sampling over every training timestep (the paper), ``ddim`` =
            deterministic DDIM with ``sampling_steps`` steps (about 20x faster at 50 steps).
        sampling_steps: denoising steps per sample; null = all timesteps for ``ddpm``, 50 for ``ddim``.
        samples_per_level: contrastive images drawn per PatchDiff level and category (paper: 1 000).
        sampling_batch_size: images denoised together while sampling (memory, not results).
        generated_dir: folder of the generated images; null = ``<trainer.default_root_dir>/generated``.
        detector_steps: optimisation steps of each detector; null = ``detector_epochs`` epochs.
        detector_epochs: detector length in passes over the normal images in groups of
            ``images_per_group`` (paper: 2 000 epochs).
        images_per_group: normal images per detector step, and generated images per level (paper: 4).
        patches_per_image: random 34 x 34 patches cut from each image (paper: 32, so 128 per kind).
        detector_lr: peak one-cycle learning rate of the detector AdamW (paper: 1e-3).
        detector_weight_decay: AdamW weight decay of the detectors (the paper does not say; 1e-4).
        memory_bank_size: features kept per memory bank, one positive and one negative bank per
            detector (paper: 512).
        beta_density: bandwidth of the cosine-similarity density kernel of the reweighting (the
            paper does not give it; 5).
        noisy_reweighting: down-weight generated patches whose features look normal (Eq. 1).
        tail_reweighting: down-weight patches from dense regions of their own class (Eq. 2).
        feature_regularizer: add the denoising-autoencoder feature loss L_feat (Eq. 5).
        gradient_penalty: add the input-gradient penalty on normal patches L_grad (Eq. 6).
        alpha_feat: weight alpha_1 of L_feat (the paper does not give it; 1.0).
        alpha_grad: weight alpha_2 of L_grad (the paper does not give it; 0.1).
        dae_input_noise: std of the Gaussian noise on the patches fed to the DAE regulariser.
        dae_feature_noise: std of the Gaussian noise on the features fed to the DAE head.
        augmentations: per-category overrides of the paper's Tables 5-6 augmentations, keyed by
            category name or ``default`` (e.g. ``{bottle: {vflip: false}}``); null = the tables.
        inner_steps: optimisation steps per dataloader batch (fewer epochs and checkpoints).
        match_sample_detail: scale the finest detail band of each level's generated images so that
            they are, on average, as sharp as the normals before the detectors train on them (not in
            the paper, which samples from fully trained generators). Under-trained or few-step
            samples are smoother than the data, and the detector then learns "smooth = generated"
            and reads a sharp defect as normal (README, "Sharpness of the samples").
        **model_options: the options of ``PatchDiffGRADModel`` (categories) and of every
            ``PatchDiffCategoryModel`` (detectors, generator architecture, diffusion schedule, scoring).
    """

    input_normalization = "minus_one_one"  # PatchDiff and the detectors both work in [-1, 1]
    default_image_size = 256
    option_renames: ClassVar[dict[str, str]] = {"fusion": "map_fusion"}
    state_dict_renames: ClassVar[list[tuple[str, str]]] = [("category_models.", "model.category_models.")]

    def __init__(
        self,
        generator_image_size: int | None = None,
        generator_steps: int = 10_000,
        generator_batch_size: int = 16,
        generator_lr: float = 1e-3,
        generator_weight_decay: float = 1e-4,
        generator_crop_size: int | None = None,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        sampling_steps: int | None = None,
        samples_per_level: int = 1000,
        sampling_batch_size: int = 50,
        generated_dir: str | None = None,
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
        inner_steps: int = 1,
        match_sample_detail: bool = False,
        **model_options: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_training_options()
        self.automatic_optimization = False
        self.model = PatchDiffGRADModel(**model_options)
        self.objective = DetectorObjective(beta_density, noisy_reweighting, tail_reweighting, feature_regularizer,
                                           gradient_penalty, alpha_feat, alpha_grad, dae_input_noise, dae_feature_noise)
        # (phase index, step inside the phase): restored with the state dict, so a resume continues the phase
        self.register_buffer("phase_progress", torch.zeros(2, dtype=torch.long))
        self._normal_images: dict[str, Tensor] = {}
        self._detector_images: CategoryTrainingImages | None = None
        # memory banks hold no learned state (refilled within a few steps after a resume): not saved
        self._memory_banks: dict[tuple[str, int], tuple[FeatureMemoryBank, FeatureMemoryBank]] = {}
        self._optimizer_index: dict[str, int] = {}

    def _check_training_options(self) -> None:
        hp = self.hparams
        for name in ("generator_steps", "generator_batch_size", "samples_per_level", "sampling_batch_size",
                     "images_per_group", "patches_per_image", "memory_bank_size", "inner_steps"):
            if int(hp[name]) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {hp[name]}")
        if hp.beta_density <= 0:
            raise ValueError(f"model.beta_density must be > 0 (kernel bandwidth), got {hp.beta_density}")
        if hp.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"model.sampler must be 'ddpm' or 'ddim', got {hp.sampler!r}")
        if hp.detector_steps is not None and hp.detector_steps < 1:
            raise ValueError(f"model.detector_steps must be >= 1 or null, got {hp.detector_steps}")

    # ---------------------------------------------------------------------------- categories
    def setup(self, stage: str) -> None:
        if self.model.categories:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        categories = list(getattr(datamodule, "categories", None) or [])
        if not categories:
            raise ValueError("PatchDiffGRAD needs its categories: set model.categories or use a datamodule "
                             "whose 'categories' property lists them after setup")
        self.model.add_categories(categories)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # renamed options and state-dict prefixes of 0.1
        state = checkpoint.setdefault("state_dict", {})
        saved = checkpoint.get(LEGACY_CATEGORIES_KEY) or (state.get(CATEGORIES_STATE_KEY) or {}).get("categories")
        if saved:
            if not self.model.categories:
                self.model.add_categories(saved)
            elif sorted(saved) != self.model.categories:
                raise ValueError(f"checkpoint was trained on categories {sorted(saved)}, "
                                 f"this model has {self.model.categories}")
            state.setdefault(CATEGORIES_STATE_KEY, self.model.get_extra_state())
        self._complete_statistics(state)

    def _complete_statistics(self, state: dict[str, Tensor]) -> None:
        """Checkpoints from before per-location statistics existed load with neutral ones (0, 1);
        0.1 checkpoints stopped before the statistics phase stored zeros, which become neutral too."""
        own = self.state_dict()
        missing = [name for name in own if ".pixel_stats_" in name and name not in state]
        for name in missing:
            state[name] = own[name].clone()
        if missing:
            log.warning("PatchDiffGRAD: checkpoint has no per-location statistics (%d buffers); "
                        "the per-location map fusions fall back to raw sums until they are recomputed",
                        len(missing))
        for name in own:
            if name.endswith(".fusion_ready") and name in state and not bool(state[name]):
                state[name.replace(".fusion_ready", ".fusion_stats")] = own[name.replace(".fusion_ready",
                                                                                         ".fusion_stats")].clone()

    # ------------------------------------------------------------------------------ the plan
    def phases(self) -> list[Phase]:
        """Every phase of this run in execution order (categories sorted by name)."""
        return phases.plan({c: self.model.category(c).levels for c in self.model.categories})

    def cursor(self) -> PhaseCursor:
        return PhaseCursor(self.phase_progress, self.phases())

    @property
    def pipeline_done(self) -> bool:
        return self.cursor().done

    def generated_root(self) -> Path:
        if self.hparams.generated_dir:
            return Path(self.hparams.generated_dir)
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(root) / "generated"

    def detector_total_steps(self, category: str) -> int:
        hp = self.hparams
        if hp.detector_steps is not None:
            return int(hp.detector_steps)
        n_images = self._normal_images[category].shape[0]
        return max(1, math.ceil(hp.detector_epochs * n_images / hp.images_per_group))

    # ----------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        named: dict[str, torch.optim.Optimizer] = {}
        for category in self.model.categories:  # the order of 0.1 checkpoints' optimiser states
            model = self.model.category(category)
            for level in model.levels:
                named[phases.generator_optimizer(category, level)] = torch.optim.AdamW(
                    model.generators[str(level)].parameters(), lr=hp.generator_lr,
                    weight_decay=hp.generator_weight_decay)
            for spec, detector, head in zip(model.specs, model.detectors, model.dae_heads):
                named[phases.detector_optimizer(category, spec.name)] = torch.optim.AdamW(
                    [*detector.parameters(), *head.parameters()], lr=hp.detector_lr,
                    weight_decay=hp.detector_weight_decay)
        self._optimizer_index = {name: i for i, name in enumerate(named)}
        return list(named.values())

    def optimizer(self, name: str) -> LightningOptimizer:
        """The optimiser called ``name`` (``phases.generator_optimizer`` / ``phases.detector_optimizer``)."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self._optimizer_index[name]]

    # ------------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("PatchDiffGRAD needs a training dataloader of normal images")
        self._normal_images = collect_normal_images(loader, self.model.categories)
        if self.pipeline_done:
            self.trainer.should_stop = True

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        cursor = self.cursor()
        run = {phases.GENERATOR: self._generator_step, phases.SAMPLE: self._sample,
               phases.DETECTORS: self._detector_step, phases.STATS: self._statistics}
        for _ in range(self.hparams.inner_steps):
            phase = cursor.current
            if phase is None:
                self.trainer.should_stop = True
                return
            run[phase.kind](phase, cursor)
            if cursor.current != phase:
                log.info("PatchDiffGRAD: next phase %s", cursor.current or "done")
        self.log("train/phase", self.phase_progress[0].float(), prog_bar=True, batch_size=1)
        return

    def _samples_exist(self, phase: Phase) -> bool:
        directory = storage.level_dir(self.generated_root(), phase.category, phase.level)
        return storage.count_complete(directory, self.hparams.samples_per_level) >= self.hparams.samples_per_level

    def _generator_step(self, phase: Phase, cursor: PhaseCursor) -> None:
        hp = self.hparams
        if self._samples_exist(phase):
            log.info("PatchDiffGRAD: samples for %s exist; skipping its training", phase)
            cursor.advance()
            return
        generator = self.model.category(phase.category).generators[str(phase.level)]
        optimizer = self.optimizer(phases.generator_optimizer(phase.category, phase.level))
        _set_lr(optimizer, one_cycle_lr(cursor.step, hp.generator_steps, hp.generator_lr))
        images = draw_images(self._normal_images[phase.category], hp.generator_batch_size, self.device,
                             hp.generator_image_size)
        coords = None
        if hp.generator_crop_size and hp.generator_crop_size < images.shape[-1]:
            images, coords = crops_with_coordinates(images, hp.generator_crop_size)
        loss = generator.training_loss(images, coords)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train/generator_loss", loss.detach(), prog_bar=True, batch_size=images.shape[0])
        cursor.count_step(hp.generator_steps)

    @torch.no_grad()
    def _sample(self, phase: Phase, cursor: PhaseCursor) -> None:
        hp = self.hparams
        directory = storage.level_dir(self.generated_root(), phase.category, phase.level)
        done = storage.count_complete(directory, hp.samples_per_level)
        normals = self._normal_images[phase.category]
        height = hp.generator_image_size or int(normals.shape[-2])
        width = hp.generator_image_size or int(normals.shape[-1])
        generator = self.model.category(phase.category).generators[str(phase.level)]
        if done < hp.samples_per_level:
            log.info("PatchDiffGRAD: sampling %d images of %s into %s", hp.samples_per_level - done, phase, directory)
        for start in range(done, hp.samples_per_level, hp.sampling_batch_size):
            count = min(hp.sampling_batch_size, hp.samples_per_level - start)
            rng = torch.Generator(device=self.device)
            rng.manual_seed(sample_seed(phase.category, phase.level, start, hp.samples_per_level))
            images = generator.sample(count, height, width, hp.sampler, hp.sampling_steps, self.device, rng)
            storage.write_images(directory, start, images)
        cursor.advance()

    def _training_images(self, category: str) -> CategoryTrainingImages:
        """Normal and generated images resized once per detector (uint8, CPU), kept for the phase.

        Also measures how much fine detail the generated images have next to the normals: a generator
        that draws smoother images than the data teaches the detector "smooth = anomalous" (README).
        """
        if self._detector_images is not None and self._detector_images.category == category:
            return self._detector_images
        hp = self.hparams
        model = self.model.category(category)
        generated = {level: storage.read_images(storage.level_dir(self.generated_root(), category, level),
                                                hp.samples_per_level) for level in model.levels}
        detectors = []
        for spec in model.specs:
            normal = resized_uint8(self._normal_images[category], spec.input_size, self.device)
            reference = float(detail_energy(normal, self.device).mean())
            images, ratios = [], []
            for level in spec.levels:
                resized = resized_uint8(generated[level], spec.input_size, self.device)
                ratio = float(detail_energy(resized, self.device).mean()) / max(reference, 1e-12)
                if hp.match_sample_detail and reference > 0:
                    resized = match_detail(resized, reference, self.device)
                ratios.append(ratio)
                images.append(resized)
            detectors.append(DetectorImages(normal, images, ratios))
            log.info("PatchDiffGRAD: %s detector %s: generated/normal fine-detail ratio %s%s", category, spec.name,
                     ", ".join(f"level {level} {r:.2f}" for level, r in zip(spec.levels, ratios)),
                     " (matched to 1)" if hp.match_sample_detail else "")
            if min(ratios) < DETAIL_WARNING_RATIO and not hp.match_sample_detail:
                log.warning("PatchDiffGRAD: %s: the generated images have %.2f of the normal images' fine detail at "
                            "%d px; the detector may learn 'smooth = anomalous' and score sharp defects as normal. "
                            "Train the PatchDiffs longer, sample with more steps or set match_sample_detail "
                            "(README)",
                            category, min(ratios), spec.input_size)
        self._detector_images = CategoryTrainingImages(category, detectors,
                                                       resolve_augmentation(category, hp.augmentations))
        return self._detector_images

    def _banks(self, category: str, d: int) -> tuple[FeatureMemoryBank, FeatureMemoryBank]:
        """The (positive, negative) memory banks of detector ``d`` of ``category``, created empty."""
        key = (category, d)
        if key not in self._memory_banks:
            dim = self.model.category(category).detectors[d].feature_dim
            self._memory_banks[key] = (FeatureMemoryBank(self.hparams.memory_bank_size, dim).to(self.device),
                                       FeatureMemoryBank(self.hparams.memory_bank_size, dim).to(self.device))
        return self._memory_banks[key]

    def _detector_step(self, phase: Phase, cursor: PhaseCursor) -> None:
        hp = self.hparams
        data = self._training_images(phase.category)
        model = self.model.category(phase.category)
        total = self.detector_total_steps(phase.category)
        lr = one_cycle_lr(cursor.step, total, hp.detector_lr)
        for d, (spec, images) in enumerate(zip(model.specs, data.detectors)):
            optimizer = self.optimizer(phases.detector_optimizer(phase.category, spec.name))
            _set_lr(optimizer, lr)
            normal_pos = draw_augmented(images.normal, hp.images_per_group, data.augmentation, False, self.device)
            normal_neg = draw_augmented(images.normal, hp.images_per_group, data.augmentation, False, self.device)
            generated = [draw_augmented(g, hp.images_per_group, data.augmentation, True, self.device)
                         for g in images.generated]
            coords = coordinate_map(spec.input_size, spec.input_size, self.device)
            patches = make_patch_batch(normal_pos, normal_neg, generated, coords, hp.patches_per_image)
            losses = self.objective.losses(model.detectors[d], model.dae_heads[d], self._banks(phase.category, d),
                                           patches.positives, patches.negatives)
            optimizer.zero_grad()
            self.manual_backward(losses["loss"])
            optimizer.step()
            for name, value in losses.items():
                self.log(f"train/{spec.name}/{name}", value.detach(), batch_size=patches.positives.shape[0])
        cursor.count_step(total)

    @torch.no_grad()
    def _statistics(self, phase: Phase, cursor: PhaseCursor) -> None:
        model = self.model.category(phase.category)
        was_training = model.training
        model.eval()
        model.compute_fusion_stats(storage.to_float(self._normal_images[phase.category], self.device))
        model.train(was_training)
        self._detector_images = None
        for d in range(len(model.specs)):
            self._memory_banks.pop((phase.category, d), None)
        cursor.advance()

    def on_train_end(self) -> None:
        if not self.pipeline_done:
            log.warning("PatchDiffGRAD stopped before its pipeline finished (at phase %s); raise "
                        "trainer.max_epochs / inner_steps or resume from the last checkpoint", self.cursor().current)

    # ------------------------------------------------------------------------------ inference
    def score_batch(self, batch: Batch) -> AnomalyOutput:
        return self.model(batch.image, batch.category)

