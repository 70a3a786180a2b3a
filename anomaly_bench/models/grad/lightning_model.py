"""``BiGridGRAD``: training and scoring glue for bi-grid GRAD (config name ``grad``).

Two-stage training inside one ``fit`` (paper Sec. III-B):

* **stage A** ("abnormal", epochs ``[0, abnormal_epochs)``): an anomaly source (FBP by default)
  corrupts the frozen features; the abnormal grid pair, its fusion stack and the shared coordinate
  mapper learn to mark the corrupted positions via channel 0 of f_a (truncated L1, th = 0.5).
* **stage B** ("normal", the next ``normal_epochs`` epochs): the abnormal branch is frozen
  (``requires_grad=False`` and eval mode, so its parameters *and* BN statistics stay bit-identical);
  the normal grid pair, its fusion stack, the mapper and the fusion weight w learn to reconstruct
  clean features (MSE on the refined output, as CRAD).

The stage is a pure function of ``self.current_epoch``, so resuming a checkpoint mid-run resumes the
right stage. There is one AdamW optimiser holding every trainable parameter (groups ``grids`` and
``nets``); parameters frozen in the current stage get no gradient (``grad is None``) and AdamW skips
them entirely, weight decay included. The StepLR-style decay counts epochs *within* the stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.fbp import build_anomaly_source
from anomaly_bench.models.components.losses import truncated_l1_loss
from anomaly_bench.models.components.refinement import official_scores
from anomaly_bench.models.grad.torch_model import BiGridGRADModel
from anomaly_bench.types import AnomalyOutput, Batch

log = logging.getLogger(__name__)

STAGE_ABNORMAL = "abnormal"
STAGE_NORMAL = "normal"
_DEFAULT_MAX_EPOCHS = 1000  # what Lightning uses when max_epochs is not given


class BiGridGRAD(AnomalyModule):
    """Bi-grid GRAD: CRAD's normal grid plus an abnormal grid trained on Feature-Block-Paste anomalies.

    Model args (see ``BiGridGRADModel``): ``backbone``, ``layers``, ``pretrained``,
    ``weights_path``, ``image_size``, ``local_resolution``, ``global_resolution``,
    ``fusion_blocks``, ``use_abnormal_grid``, ``fusion_mode``, ``fusion_weight_init``,
    ``fusion_lambda``, ``jitter_*``, ``use_refinement``, ``refine_*``, ``init_std``.

    Training args:
        abnormal_epochs / normal_epochs: length of stage A / stage B. An unset ``trainer.max_epochs``
            becomes their sum (only ``normal_epochs`` when the abnormal grid is off); a different
            explicit value is an error, never silently replaced.
        anomaly_source: ``"fbp"`` | ``"gaussian_noise"`` | ``"real"`` (ground-truth masks of
            anomalous training images); ``anomaly_source_options`` are its constructor kwargs.
        contrastive_threshold / negative_margin: the truncated L1 (th, "symmetric" | "paper").
        train_mapper_in_abnormal_stage: the shared coordinate mapper also learns from the stage A
            loss (official: the mode flag only toggles grid tensors, so it does).
        grid_lr / net_lr / weight_decay: AdamW groups (official 0.1 / 1e-3 / 0.01).
        lr_step_epochs / lr_gamma: x gamma every ``lr_step_epochs`` epochs of a stage.
        grad_clip_norm: global-norm clipping used when ``trainer.gradient_clip_val`` is unset.
    Scoring args: ``image_score``, ``blur_kernel``, ``pool_kernel``, ``blur_pixel_map`` as in
    ``anomaly_bench.models.components.refinement.official_scores`` (CRAD's protocol).
    """

    input_normalization = "imagenet"
    default_image_size = 256

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int | Sequence[int] = 256,
        local_resolution: int = 32,
        global_resolution: int = 4,
        fusion_blocks: int = 9,
        use_abnormal_grid: bool = True,
        fusion_mode: str = "learned",
        fusion_weight_init: float = -0.2,
        fusion_lambda: float = 0.8,
        jitter_std: float = 0.05,
        jitter_p: float = 0.5,
        jitter_mode: str = "iteration",
        use_refinement: bool = True,
        refine_mse_weight: float = 0.3,
        refine_cos_weight: float = 0.7,
        refine_mse_threshold: float = 10.0,
        init_std: float = 0.01,
        abnormal_epochs: int = 10,
        normal_epochs: int = 50,
        anomaly_source: str = "fbp",
        anomaly_source_options: dict[str, Any] | None = None,
        contrastive_threshold: float = 0.5,
        negative_margin: str = "symmetric",
        train_mapper_in_abnormal_stage: bool = True,
        grid_lr: float = 0.1,
        net_lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_step_epochs: int = 40,
        lr_gamma: float = 0.1,
        grad_clip_norm: float | None = 0.1,
        image_score: str = "official",
        blur_kernel: int | None = None,
        pool_kernel: int | None = None,
        blur_pixel_map: bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
    ) -> None:
        super().__init__(evaluator=evaluator, visualizer=visualizer)
        self.save_hyperparameters(ignore=["evaluator", "visualizer"])
        if abnormal_epochs < 0 or normal_epochs < 1:
            raise ValueError(
                f"BiGridGRAD needs abnormal_epochs >= 0 and normal_epochs >= 1, "
                f"got {abnormal_epochs}, {normal_epochs}"
            )
        if lr_step_epochs < 1:
            raise ValueError(f"BiGridGRAD lr_step_epochs must be >= 1, got {lr_step_epochs}")
        self.model = BiGridGRADModel(
            backbone=backbone,
            layers=layers,
            pretrained=pretrained,
            weights_path=weights_path,
            image_size=image_size,
            local_resolution=local_resolution,
            global_resolution=global_resolution,
            fusion_blocks=fusion_blocks,
            use_abnormal_grid=use_abnormal_grid,
            fusion_mode=fusion_mode,
            fusion_weight_init=fusion_weight_init,
            fusion_lambda=fusion_lambda,
            jitter_std=jitter_std,
            jitter_p=jitter_p,
            jitter_mode=jitter_mode,
            use_refinement=use_refinement,
            refine_mse_weight=refine_mse_weight,
            refine_cos_weight=refine_cos_weight,
            refine_mse_threshold=refine_mse_threshold,
            init_std=init_std,
        )
        self.anomaly_source = build_anomaly_source(anomaly_source, anomaly_source_options)
        # fail at construction, not after stage A: validates negative_margin
        truncated_l1_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), negative_margin=negative_margin)
        self._active_stage: str | None = None

    # ------------------------------------------------------------------------------- stages
    @property
    def stage_a_epochs(self) -> int:
        """Epochs of stage A actually run (0 when the abnormal grid is off)."""
        return int(self.hparams.abnormal_epochs) if self.model.use_abnormal_grid else 0

    @property
    def total_epochs(self) -> int:
        return self.stage_a_epochs + int(self.hparams.normal_epochs)

    def stage_at(self, epoch: int) -> str:
        return STAGE_ABNORMAL if epoch < self.stage_a_epochs else STAGE_NORMAL

    @property
    def stage(self) -> str:
        """The training stage of the current epoch."""
        return self.stage_at(int(self.current_epoch))

    def apply_stage(self, stage: str) -> None:
        """Set ``requires_grad`` for ``stage`` and keep frozen batch-norm statistics frozen."""
        model = self.model
        normal_params = list(model.normal.parameters())
        if model.fusion_mode == "learned":
            normal_params.append(model.fusion_weight)
        abnormal_params = list(model.abnormal.parameters()) if model.abnormal is not None else []
        train_mapper = stage == STAGE_NORMAL or bool(self.hparams.train_mapper_in_abnormal_stage)
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
        self.apply_stage(self.stage)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning puts the whole module back into train mode after validation; re-freeze.
        if self._active_stage != self.stage:
            self.apply_stage(self.stage)
        elif self.stage == STAGE_NORMAL and self.model.abnormal is not None and self.model.abnormal.training:
            self.model.abnormal.eval()

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        stage = self.stage
        features = self.model.extract(batch.image)
        if stage == STAGE_ABNORMAL:
            corrupted, anomaly_mask = self.anomaly_source(features, batch.mask)
            similarity = self.model.abnormal_output(corrupted)[:, 0]
            loss = truncated_l1_loss(
                similarity,
                anomaly_mask,
                threshold=float(self.hparams.contrastive_threshold),
                negative_margin=str(self.hparams.negative_margin),
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
            {"grids": self.model.grid_parameters(), "nets": self.model.network_parameters()},
            {"grids": float(self.hparams.grid_lr), "nets": float(self.hparams.net_lr)},
        )
        optimizer = torch.optim.AdamW(groups, weight_decay=float(self.hparams.weight_decay))
        stage_a = self.stage_a_epochs
        step, gamma = int(self.hparams.lr_step_epochs), float(self.hparams.lr_gamma)

        def stage_lr_factor(epoch: int) -> float:
            epoch_in_stage = epoch if epoch < stage_a else epoch - stage_a
            return gamma ** (epoch_in_stage // step)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, stage_lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def default_gradient_clip_norm(self) -> float | None:
        # the official global-norm clip (0.1); trainer.gradient_clip_val wins when set
        return self.hparams.grad_clip_norm

    # ------------------------------------------------------------------------------ inference
    def forward(self, images: Tensor) -> AnomalyOutput:
        distance = self.model(images)
        anomaly_map, score = official_scores(
            distance,
            tuple(images.shape[-2:]),
            blur_kernel=self.hparams.blur_kernel,
            pool_kernel=self.hparams.pool_kernel,
            blur_pixel_map=bool(self.hparams.blur_pixel_map),
            image_score=str(self.hparams.image_score),
        )
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=score)
