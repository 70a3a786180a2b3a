"""CRAD training glue (Lightning): optimiser, schedule, clipping, and the frozen-feature cache.

Official defaults (tae-mo/CRAD final code, see README.md): AdamW with weight decay 0.01, grids at
lr 0.1 and everything else at 1e-3, StepLR(40, 0.1) per epoch, gradient-norm clipping at 0.1,
MSE between the refined reconstruction and the frozen features. Inference is ``CRADModel``'s.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.feature_cache import FeatureCache
from anomaly_bench.models.crad.torch_model import CRADModel
from anomaly_bench.types import Batch


class OfficialStepDecay:
    """Learning-rate factor of epoch ``e``: ``gamma ** ((e - 1) // step)`` (epoch 0 at the base rate).

    The official loop calls ``lr_scheduler.step(epoch)`` *after* training epoch ``epoch``, which sets
    the rate of epoch ``epoch + 1`` from ``epoch``: the first decayed epoch is ``step + 1`` (41), one
    later than a StepLR stepped after each epoch (40). A class, not a lambda, so it pickles.
    """

    def __init__(self, step: int, gamma: float) -> None:
        self.step, self.gamma = int(step), float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** (max(epoch - 1, 0) // self.step)


class CRAD(AnomalyModule):
    """CRAD: continuous memory (local + global grids) for unsupervised anomaly detection.

    Architecture and scoring options belong to ``CRADModel`` / ``CRADHead`` (passed through
    ``**model_options``); the options here only shape training.

    Args:
        lr: learning rate of every trainable network parameter (official 1e-3).
        grid_lr: learning rate of the grid lattices (official 0.1, 100x the networks').
        weight_decay: AdamW weight decay of both parameter groups (official 0.01).
        lr_step_epochs: the learning rates are multiplied by ``lr_gamma`` every this many epochs,
            as the official loop does (official 40: epochs 0-40 at the base rate, 41 on decayed).
        lr_gamma: the factor of each learning-rate step (official 0.1).
        grad_clip_norm: global gradient-norm clip (official 0.1); ``trainer.gradient_clip_val`` wins.
        feature_cache: reuse the frozen backbone's features across epochs: ``auto`` = a memory
            cache when the datamodule reports ``deterministic_train`` (no random augmentation);
            ``memory`` / ``disk`` force it; ``none`` switches it off.
        feature_cache_dir: folder of the ``disk`` cache (one file per image and backbone state).
        feature_cache_dtype: dtype the cached features are stored in (``float16`` halves memory).
        **model_options: the options of ``CRADModel`` (backbone, image size, scoring) and of its
            ``CRADHead`` (grids, fusion, refinement).
    """

    input_normalization = "imagenet"
    option_renames: ClassVar[dict[str, str]] = {"anomaly_map_blur": "blur_anomaly_map"}
    option_value_renames: ClassVar[dict[str, dict[Any, Any]]] = {
        "image_score": {"official": "blur_pool_max", "mean_max": "pool_max"}}
    state_dict_renames: ClassVar[list[tuple[str, str]]] = [("model.extractor.", "model.feature_extractor.")]

    def __init__(
        self,
        lr: float = 1e-3,
        grid_lr: float = 0.1,
        weight_decay: float = 0.01,
        lr_step_epochs: int = 40,
        lr_gamma: float = 0.1,
        grad_clip_norm: float | None = 0.1,
        feature_cache: Literal["auto", "memory", "disk", "none"] = "auto",
        feature_cache_dir: str | None = None,
        feature_cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        **model_options: Any,
    ) -> None:
        super().__init__()
        if lr_step_epochs < 1:
            raise ValueError(f"CRAD lr_step_epochs must be >= 1, got {lr_step_epochs}")
        self.save_hyperparameters()
        self.model = CRADModel(**model_options)
        self.feature_cache = FeatureCache(feature_cache, feature_cache_dir, feature_cache_dtype, owner="CRAD")

    # ------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        self.feature_cache.start(self.trainer, self.model.feature_extractor, self.model.image_size)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = self.feature_cache.features(batch, self.model.extract_features)
        recon = self.model.reconstruct(features)
        loss = F.mse_loss(recon.refined.float(), features.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss

    def on_train_end(self) -> None:
        self.feature_cache.clear()

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        head = self.model.head
        grid_ids = {id(p) for p in head.grid_parameters()}
        grids = [p for p in head.parameters() if id(p) in grid_ids and p.requires_grad]
        networks = [p for p in head.parameters() if id(p) not in grid_ids and p.requires_grad]
        groups = self.param_groups({"grids": grids, "networks": networks}, {"grids": hp.grid_lr, "networks": hp.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, OfficialStepDecay(hp.lr_step_epochs, hp.lr_gamma))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def default_gradient_clip_norm(self) -> float | None:
        return self.hparams.grad_clip_norm
