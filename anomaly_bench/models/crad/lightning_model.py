"""CRAD training and scoring glue (Lightning).

Official defaults (tae-mo/CRAD final code, see README.md): AdamW with weight decay 0.01, grids at
lr 0.1 and everything else at 1e-3, StepLR(40, 0.1) per epoch, gradient-norm clipping at 0.1,
MSE between the refined reconstruction and the frozen features, and image scores from box-filtered
feature-distance maps.

Speed: the backbone is frozen, so when the datamodule reports ``deterministic_train`` (no random
augmentation) its features are computed in the first epoch and reused (``feature_cache``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.components.refinement import official_scores
from anomaly_bench.models.crad.torch_model import CRADModel
from anomaly_bench.types import AnomalyOutput, Batch

FEATURE_CACHE_MODES = ("auto", "memory", "disk", "none")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CRAD(AnomalyModule):
    """CRAD: continuous memory (local + global grids) for unsupervised anomaly detection.

    Backbone:
        backbone, layers, pretrained, weights_path: see ``TimmFeatureExtractor``. Default is the
            TF-ported EfficientNet-B4 (the weights family of the official lukemelas backbone),
            stages 2 and 3 (56 ch @ /8 + 160 ch @ /16 -> 216 ch). ``backbone: tiny`` with
            ``pretrained: false`` is the random CPU configuration for tests and demos.
        image_size: input size the data is resized to; fixes the global grid's feature size.
    Memory (ablation switches):
        use_local, use_global, local_resolution (8), global_resolution (4), local_dim (2),
        global_dim (2), use_jitter, jitter_std (0.05), jitter_p (0.5), jitter_mode
        ("iteration" = official, "pixel" = paper text).
    Fusion:
        fusion ("mobilenet_se" official | "basic" paper v1), fusion_blocks (11 | 7),
        fusion_expansion_ratio (2.0 CRAD | 0.5 CRAD-S), init_std (0.01).
    Refinement:
        use_refinement, refine_mse_weight (0.3), refine_cos_weight (0.7), refine_mse_threshold (10).
    Optimisation:
        lr (1e-3), grid_lr (0.1), weight_decay (0.01), lr_step_epochs (40), lr_gamma (0.1),
        grad_clip_norm (0.1; applied unless ``trainer.gradient_clip_val`` is set, which wins).
    Scoring:
        blur_kernel / pool_kernel (None = official 21 / 32 at 224 px, scaled with image_size),
        anomaly_map_blur (True = the official blurred pixel map), image_score
        ("official" | "max" | "mean_max").
    Speed:
        feature_cache ("auto" = memory cache when the datamodule's ``deterministic_train`` is True;
        "memory" / "disk" force it; "none"), feature_cache_dir (disk mode), feature_cache_dtype
        ("float32" | "float16" | "bfloat16"), channels_last.
    """

    input_normalization = "imagenet"
    default_image_size = 224

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (2, 3),
        pretrained: bool = True,
        weights_path: str | None = None,
        image_size: int = 224,
        use_local: bool = True,
        use_global: bool = True,
        local_resolution: int = 8,
        global_resolution: int = 4,
        local_dim: int = 2,
        global_dim: int = 2,
        use_jitter: bool = True,
        jitter_std: float = 0.05,
        jitter_p: float = 0.5,
        jitter_mode: str = "iteration",
        fusion: str = "mobilenet_se",
        fusion_blocks: int = 11,
        fusion_expansion_ratio: float = 2.0,
        init_std: float = 0.01,
        use_refinement: bool = True,
        refine_mse_weight: float = 0.3,
        refine_cos_weight: float = 0.7,
        refine_mse_threshold: float = 10.0,
        lr: float = 1e-3,
        grid_lr: float = 0.1,
        weight_decay: float = 0.01,
        lr_step_epochs: int = 40,
        lr_gamma: float = 0.1,
        grad_clip_norm: float | None = 0.1,
        blur_kernel: int | None = None,
        pool_kernel: int | None = None,
        anomaly_map_blur: bool = True,
        image_score: str = "official",
        feature_cache: str = "auto",
        feature_cache_dir: str | None = None,
        feature_cache_dtype: str = "float32",
        channels_last: bool = False,
        evaluator: Callback | bool = True,
        visualizer: Callback | bool = True,
    ) -> None:
        super().__init__(evaluator=evaluator, visualizer=visualizer)
        if feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(f"CRAD feature_cache must be one of {FEATURE_CACHE_MODES}, got {feature_cache!r}")
        if feature_cache_dtype not in _DTYPES:
            raise ValueError(f"CRAD feature_cache_dtype must be one of {tuple(_DTYPES)}, got {feature_cache_dtype!r}")
        if feature_cache == "disk" and not feature_cache_dir:
            raise ValueError("CRAD feature_cache='disk' needs feature_cache_dir (a folder for the .pt files)")
        if image_score not in ("official", "max", "mean_max"):
            raise ValueError(f"CRAD image_score must be 'official', 'max' or 'mean_max', got {image_score!r}")
        self.save_hyperparameters(ignore=["evaluator", "visualizer"])
        self.model = CRADModel(
            backbone=backbone,
            layers=layers,
            pretrained=pretrained,
            weights_path=weights_path,
            image_size=image_size,
            use_local=use_local,
            use_global=use_global,
            local_resolution=local_resolution,
            global_resolution=global_resolution,
            local_dim=local_dim,
            global_dim=global_dim,
            use_jitter=use_jitter,
            jitter_std=jitter_std,
            jitter_p=jitter_p,
            jitter_mode=jitter_mode,
            fusion=fusion,
            fusion_blocks=fusion_blocks,
            fusion_expansion_ratio=fusion_expansion_ratio,
            use_refinement=use_refinement,
            refine_mse_weight=refine_mse_weight,
            refine_cos_weight=refine_cos_weight,
            refine_mse_threshold=refine_mse_threshold,
            init_std=init_std,
        )
        self._cache_enabled: bool | None = None  # decided at fit start
        self._memory_cache: dict[str, Tensor] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    # ----------------------------------------------------------------------------- inference
    def _prepare(self, images: Tensor) -> Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: Tensor) -> AnomalyOutput:
        distance = self.model.distance(self._prepare(images))
        anomaly_map, score = official_scores(
            distance,
            (int(images.shape[-2]), int(images.shape[-1])),
            blur_kernel=self.hparams.blur_kernel,
            pool_kernel=self.hparams.pool_kernel,
            blur_pixel_map=self.hparams.anomaly_map_blur,
            image_score=self.hparams.image_score,
        )
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=score)

    # ------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._cache_enabled = self._decide_cache()

    def _decide_cache(self) -> bool:
        mode = self.hparams.feature_cache
        if mode == "none":
            return False
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        deterministic = getattr(datamodule, "deterministic_train", None)
        if mode == "auto":
            return deterministic is True
        if deterministic is False:
            raise ValueError(
                f"CRAD feature_cache={mode!r} but the datamodule applies random training augmentation "
                "(deterministic_train is False): cached features would freeze one augmented view. "
                "Use feature_cache: auto or none."
            )
        return True

    def _disk_file(self, key: str) -> Path:
        hp = self.hparams
        fingerprint = f"{hp.backbone}|{tuple(hp.layers)}|{hp.pretrained}|{hp.weights_path}|{hp.image_size}|{key}"
        return Path(hp.feature_cache_dir) / (hashlib.sha1(fingerprint.encode()).hexdigest() + ".pt")

    def _cache_get(self, key: str) -> Tensor | None:
        if self.hparams.feature_cache == "disk":
            path = self._disk_file(key)
            return torch.load(path, map_location="cpu") if path.is_file() else None
        return self._memory_cache.get(key)

    def _cache_put(self, key: str, value: Tensor) -> None:
        value = value.detach().to("cpu", _DTYPES[self.hparams.feature_cache_dtype]).contiguous()
        if self.hparams.feature_cache == "disk":
            path = self._disk_file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(value.clone(), path)
        else:
            self._memory_cache[key] = value

    def train_features(self, batch: Batch) -> Tensor:
        """Frozen features of a training batch, from the cache when enabled."""
        if not self._cache_enabled:
            return self.model.features(self._prepare(batch.image))
        if len(batch.path) != len(batch):
            raise ValueError("CRAD feature cache needs batch.path (one key per image); got "
                             f"{len(batch.path)} paths for {len(batch)} images")
        cached = [self._cache_get(k) for k in batch.path]
        missing = [i for i, c in enumerate(cached) if c is None]
        if missing:
            fresh = self.model.features(self._prepare(batch.image[missing]))
            for j, i in enumerate(missing):
                self._cache_put(batch.path[i], fresh[j])
                cached[i] = fresh[j]
        self.cache_misses += len(missing)
        self.cache_hits += len(batch) - len(missing)
        feats = torch.stack([c.to(self.device, torch.float32) for c in cached])
        return feats.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else feats

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = self.train_features(batch)
        recon = self.model.reconstruct(features)
        loss = F.mse_loss(recon.refined.float(), features.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss

    def on_train_end(self) -> None:
        self._memory_cache.clear()

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        grid_ids = {id(p) for p in self.model.head.grid_parameters()}
        grids = [p for p in self.model.head.parameters() if id(p) in grid_ids and p.requires_grad]
        nets = [p for p in self.model.head.parameters() if id(p) not in grid_ids and p.requires_grad]
        groups = self.param_groups({"grids": grids, "networks": nets}, {"grids": hp.grid_lr, "networks": hp.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_step_epochs, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def default_gradient_clip_norm(self) -> float | None:
        # the official global-norm clip (0.1); trainer.gradient_clip_val wins when set
        return self.hparams.grad_clip_norm
