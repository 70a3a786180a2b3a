"""``BiGridGRAD``: training glue for bi-grid GRAD (config name ``grad``).

Two-stage training inside one ``fit`` (paper Sec. III-B):

* **stage A** ("abnormal", epochs ``[0, abnormal_epochs)``, or interleaved with B when
  ``stage_schedule="alternating"``): an anomaly source (FBP by default)
  corrupts the frozen features; the abnormal grid pair, its fusion stack and the shared coordinate
  mapper learn to mark the corrupted positions via channel 0 of f_a (truncated L1, th = 0.5).
* **stage B** ("normal", the next ``normal_epochs`` epochs): the abnormal branch is frozen
  (``requires_grad=False`` and eval mode, so its parameters *and* BN statistics stay bit-identical);
  the normal grid pair, its fusion stack and the fusion weight w (and the shared mapper with
  ``train_mapper_in_normal_stage: true``) learn to reconstruct clean features (MSE on the refined
  output, as CRAD).

The stage is a pure function of ``self.current_epoch``, so resuming a checkpoint mid-run resumes the
right stage. There is one AdamW optimiser holding every trainable parameter (groups ``grids`` and
``networks``); parameters frozen in the current stage get no gradient (``grad is None``) and AdamW skips
them entirely, weight decay included. The StepLR-style decay counts epochs *within* the stage.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.fbp import build_anomaly_source
from anomaly_bench.models.components.losses import TruncatedL1Normalization, truncated_l1_loss
from anomaly_bench.models.grad.torch_model import BiGridGRADModel
from anomaly_bench.types import Batch

log = logging.getLogger(__name__)

STAGE_ABNORMAL = "abnormal"
STAGE_NORMAL = "normal"
_DEFAULT_MAX_EPOCHS = 1000  # what Lightning uses when max_epochs is not given


STAGE_SCHEDULES = ("sequential", "alternating")


class StageSchedule:
    """Which stage each epoch trains, and its index within that stage.

    ``sequential``: epochs ``[0, A)`` are stage A, the rest stage B. ``alternating``: the first ``2A``
    epochs alternate A, B, A, B..., the rest are B (A abnormal and B normal epochs either way).
    """

    def __init__(self, abnormal_epochs: int, normal_epochs: int, mode: str = "sequential") -> None:
        self.abnormal_epochs, self.normal_epochs, self.mode = int(abnormal_epochs), int(normal_epochs), mode

    def stage_at(self, epoch: int) -> str:
        if self.mode == "alternating":
            return STAGE_ABNORMAL if epoch < 2 * self.abnormal_epochs and epoch % 2 == 0 else STAGE_NORMAL
        return STAGE_ABNORMAL if epoch < self.abnormal_epochs else STAGE_NORMAL

    def epoch_in_stage(self, epoch: int) -> int:
        stage = self.stage_at(epoch)
        return sum(1 for e in range(epoch) if self.stage_at(e) == stage)


class StageDecay:
    """Learning-rate factor: ``gamma`` per ``step`` epochs *of the current stage* (restarts with each stage).

    Holds plain numbers only: LambdaLR saves a callable object's attributes in the checkpoint,
    which must load with ``weights_only=True``.
    """

    def __init__(self, schedule: StageSchedule, step: int, gamma: float) -> None:
        self.abnormal_epochs, self.normal_epochs, self.mode = schedule.abnormal_epochs, schedule.normal_epochs, \
            schedule.mode
        self.step, self.gamma = step, gamma

    def __call__(self, epoch: int) -> float:
        schedule = StageSchedule(self.abnormal_epochs, self.normal_epochs, self.mode)
        return self.gamma ** (schedule.epoch_in_stage(epoch) // self.step)


class BiGridGRAD(AnomalyModule):
    """Bi-grid GRAD: CRAD's normal grid plus an abnormal grid trained on Feature-Block-Paste anomalies.

    Architecture and scoring options belong to ``BiGridGRADModel`` (passed through
    ``**model_options``); the options here only shape training.

    Args:
        abnormal_epochs: length of training stage A (the abnormal grid learns to mark pasted
            anomalies). An unset ``trainer.max_epochs`` becomes ``abnormal_epochs + normal_epochs``
            (only ``normal_epochs`` when the abnormal grid is off); another explicit value is an error.
        normal_epochs: length of training stage B (the normal grid learns to reconstruct clean features).
        anomaly_source: what corrupts the features in stage A: ``fbp`` (Feature Block Paste, the
            paper's), ``gaussian_noise``, or ``real`` (ground-truth masks of anomalous training images).
        anomaly_source_options: keyword arguments of the anomaly source (e.g. FBP's ``radius_range``).
        contrastive_threshold: th of the truncated L1 on the abnormal similarity map (official 0.5).
        negative_margin: how the truncated L1 treats normal positions: ``symmetric`` (official code)
            or ``paper`` (the paper's one-sided margin).
        contrastive_normalization: what the truncated L1's sums are divided by: ``per_image_count``
            (the public GRAD file: the batch's positive sum over one image's mask count) or
            ``per_pixel_mean`` (each term a mean over its pixels; positives weigh about 1/B as much).
        train_mapper_in_abnormal_stage: let the stage-A loss also train the shared coordinate
            mapper (official: the mode flag only toggles grid tensors, so it does).
        train_mapper_in_normal_stage: let stage B keep training the shared coordinate mapper. The
            mapper also places the frozen abnormal grid's samples, so training it in stage B moves
            the coordinates that grid was fitted to (without an abnormal grid the mapper always trains).
            Default False (frozen after stage A): better on
            held-out synthetic GoodsAD seeds (mean image / pixel AUROC 0.847 / 0.879 vs 0.815 / 0.850,
            ``benchmarks/results/grad_stage_b_mapper.md``).
        stage_schedule: ``sequential`` (all of stage A, then all of stage B: the paper's text) or
            ``alternating`` (A and B epochs interleaved, A-B-A-B... until the A epochs are used up,
            then B: the paper's Fig. 2 "the grids also alternate during training").
        grid_lr: learning rate of the grid lattices (official 0.1).
        lr: learning rate of the trained networks: mapper, fusion stacks, recovery convs, w (1e-3).
        weight_decay: AdamW weight decay of both parameter groups (official 0.01).
        lr_step_epochs: the learning rates are multiplied by ``lr_gamma`` every this many epochs
            of a stage (the decay restarts with stage B).
        lr_gamma: the factor of each learning-rate step (official 0.1).
        grad_clip_norm: global gradient-norm clip (official 0.1); ``trainer.gradient_clip_val`` wins.
        **model_options: the options of ``BiGridGRADModel`` (backbone, image size, grids, fusion,
            refinement, scoring).
    """

    input_normalization = "imagenet"
    option_renames: ClassVar[dict[str, str]] = {"net_lr": "lr", "blur_pixel_map": "blur_anomaly_map"}
    option_value_renames: ClassVar[dict[str, dict[Any, Any]]] = {
        "image_score": {"official": "blur_pool_max", "mean_max": "pool_max"}}

    def __init__(
        self,
        abnormal_epochs: int = 10,
        normal_epochs: int = 50,
        anomaly_source: Literal["fbp", "gaussian_noise", "real"] = "fbp",
        anomaly_source_options: dict[str, Any] | None = None,
        contrastive_threshold: float = 0.5,
        negative_margin: Literal["symmetric", "paper"] = "symmetric",
        contrastive_normalization: TruncatedL1Normalization = "per_image_count",
        train_mapper_in_abnormal_stage: bool = True,
        train_mapper_in_normal_stage: bool = False,
        stage_schedule: Literal["sequential", "alternating"] = "sequential",
        grid_lr: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_step_epochs: int = 40,
        lr_gamma: float = 0.1,
        grad_clip_norm: float | None = 0.1,
        **model_options: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if abnormal_epochs < 0 or normal_epochs < 1:
            raise ValueError(
                f"BiGridGRAD needs abnormal_epochs >= 0 and normal_epochs >= 1, "
                f"got {abnormal_epochs}, {normal_epochs}"
            )
        if lr_step_epochs < 1:
            raise ValueError(f"BiGridGRAD lr_step_epochs must be >= 1, got {lr_step_epochs}")
        if stage_schedule not in STAGE_SCHEDULES:
            raise ValueError(f"BiGridGRAD stage_schedule must be one of {STAGE_SCHEDULES}, got {stage_schedule!r}")
        if stage_schedule == "alternating" and normal_epochs < abnormal_epochs:
            raise ValueError("BiGridGRAD stage_schedule='alternating' interleaves each abnormal epoch with a normal "
                             f"one: normal_epochs ({normal_epochs}) must be >= abnormal_epochs ({abnormal_epochs})")
        self.model = BiGridGRADModel(**model_options)
        self.anomaly_source = build_anomaly_source(anomaly_source, anomaly_source_options)
        # fail at construction, not after stage A: validates negative_margin and the normalization
        truncated_l1_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), negative_margin=negative_margin,
                          normalization=contrastive_normalization)
        self._active_stage: str | None = None

    # ------------------------------------------------------------------------------- stages
    @property
    def stage_a_epochs(self) -> int:
        """Epochs of stage A actually run (0 when the abnormal grid is off)."""
        return int(self.hparams.abnormal_epochs) if self.model.use_abnormal_grid else 0

    @property
    def schedule(self) -> StageSchedule:
        return StageSchedule(self.stage_a_epochs, int(self.hparams.normal_epochs), str(self.hparams.stage_schedule))

    @property
    def total_epochs(self) -> int:
        return self.stage_a_epochs + int(self.hparams.normal_epochs)

    def stage_at(self, epoch: int) -> str:
        return self.schedule.stage_at(epoch)

    @property
    def training_stage(self) -> str:
        """The training stage (``abnormal`` | ``normal``) of the current epoch."""
        return self.stage_at(int(self.current_epoch))

    def apply_stage(self, stage: str) -> None:
        """Set ``requires_grad`` for ``stage`` and keep frozen batch-norm statistics frozen."""
        model = self.model
        normal_params = list(model.normal.parameters())
        if model.fusion_mode == "learned":
            normal_params.append(model.fusion_weight)
        abnormal_params = list(model.abnormal.parameters()) if model.abnormal is not None else []
        if stage == STAGE_NORMAL:
            # without an abnormal grid there is no stage A to have trained the mapper: it trains here
            train_mapper = bool(self.hparams.train_mapper_in_normal_stage) or model.abnormal is None
        else:
            train_mapper = bool(self.hparams.train_mapper_in_abnormal_stage)
        for p in normal_params:
            p.requires_grad_(stage == STAGE_NORMAL)
        for p in abnormal_params:
            p.requires_grad_(stage == STAGE_ABNORMAL)
        for p in model.mapper.parameters():
            p.requires_grad_(train_mapper)
        if stage == STAGE_NORMAL and model.abnormal is not None:
            model.abnormal.eval()
        self._active_stage = stage

    def setup(self, stage: str) -> None:
        if stage != "fit" or self._trainer is None:
            return
        fit_loop = self.trainer.fit_loop
        configured = fit_loop.max_epochs
        if configured != self.total_epochs:
            if configured not in (None, -1, _DEFAULT_MAX_EPOCHS):
                # never override a Trainer setting the user chose: say which keys disagree
                raise ValueError(
                    f"BiGridGRAD: trainer.max_epochs={configured} disagrees with model.init_args "
                    f"abnormal_epochs + normal_epochs = {self.total_epochs} (stage A {self.stage_a_epochs}, "
                    f"stage B {self.hparams.normal_epochs}); set trainer.max_epochs to {self.total_epochs} "
                    "or leave it unset, and choose the stage lengths in model.init_args"
                )
            fit_loop.max_epochs = self.total_epochs

    def on_train_epoch_start(self) -> None:
        self.apply_stage(self.training_stage)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning puts the whole module back into train mode after validation; re-freeze.
        if self._active_stage != self.training_stage:
            self.apply_stage(self.training_stage)
        elif self.training_stage == STAGE_NORMAL and self.model.abnormal is not None and self.model.abnormal.training:
            self.model.abnormal.eval()

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        stage = self.training_stage
        features = self.model.extract_features(batch.image)
        if stage == STAGE_ABNORMAL:
            corrupted, anomaly_mask = self.anomaly_source(features, batch.mask)
            similarity = self.model.abnormal_output(corrupted)[:, 0]
            loss = truncated_l1_loss(
                similarity,
                anomaly_mask,
                threshold=float(self.hparams.contrastive_threshold),
                negative_margin=str(self.hparams.negative_margin),
                normalization=self.hparams.contrastive_normalization,
            )
            with torch.no_grad():
                self.log("train/anomalous_fraction", anomaly_mask.float().mean(), batch_size=len(batch))
        else:
            reconstruction = self.model.reconstruct(features)
            loss = F.mse_loss(reconstruction.refined, features.float())
        self.log(
            f"train/loss_{stage}", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch)
        )
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.param_groups(
            {"grids": self.model.grid_parameters(), "networks": self.model.network_parameters()},
            {"grids": float(self.hparams.grid_lr), "networks": float(self.hparams.lr)},
        )
        optimizer = torch.optim.AdamW(groups, weight_decay=float(self.hparams.weight_decay))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, StageDecay(self.schedule, int(self.hparams.lr_step_epochs), float(self.hparams.lr_gamma)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def default_gradient_clip_norm(self) -> float | None:
        # the official global-norm clip (0.1); trainer.gradient_clip_val wins when set
        return self.hparams.grad_clip_norm
