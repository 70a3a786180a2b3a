"""A tiny AnomalyModule that proves the spine before (and independently of) the real methods.

mode="stats": per-channel colour statistics of the training normals (sums in buffers, reduced over
DDP ranks), map = squared z-score averaged over channels and smoothed; no gradients, so the result
does not depend on how batches are split over processes (the DDP test relies on that).
mode="learned": a two-layer conv denoiser trained with SGD on noisy inputs; exercises optimisers,
checkpoint resume and seeding (its result depends on shuffling and noise).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn

from anomaly_bench.models import AnomalyModule
from anomaly_bench.types import LABEL_NORMAL, AnomalyOutput, Batch


class TinyModel(AnomalyModule):
    def __init__(self, mode: str = "stats", lr: float = 0.05, noise: float = 0.2,
                 evaluator: Any = True, visualizer: Any = True) -> None:
        super().__init__(evaluator=evaluator, visualizer=visualizer)
        if mode not in ("stats", "learned"):
            raise ValueError(f"TinyModel.mode must be 'stats' or 'learned', got {mode!r}")
        self.mode, self.lr, self.noise = mode, lr, noise
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(3, dtype=torch.float64))
        self.automatic_optimization = mode == "learned"

    def forward(self, images: Tensor) -> AnomalyOutput:
        if self.mode == "stats":
            count = self.count.clamp_min(1)
            mean = (self.total / count).float().view(1, 3, 1, 1)
            var = (self.total_sq / count).float().view(1, 3, 1, 1) - mean**2
            amap = ((images - mean) ** 2 / var.clamp_min(1e-6)).mean(1, keepdim=True)
        else:
            amap = (images - self.net(images)).abs().mean(1, keepdim=True)
        amap = F.avg_pool2d(amap, 5, stride=1, padding=2)[:, 0]
        return AnomalyOutput(anomaly_map=amap, pred_score=amap.flatten(1).amax(1))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images = batch.image[batch.label == LABEL_NORMAL]
        if self.mode == "stats":
            pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
            self._epoch_stats += torch.stack([pixels.new_full((3,), pixels.shape[1]), pixels.sum(1),
                                              (pixels**2).sum(1)])
            return None
        noisy = images + self.noise * torch.randn_like(images)
        loss = F.mse_loss(self.net(noisy), images)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_stats = torch.zeros(3, 3, dtype=torch.float64, device=self.device)

    def on_train_epoch_end(self) -> None:
        if self.mode != "stats":
            return
        stats = self._epoch_stats
        if self.trainer.world_size > 1:  # every rank saw its own shard of this epoch: add them up
            stats = self.all_gather(stats).sum(0)
        self.count += stats[0, 0]
        self.total += stats[1]
        self.total_sq += stats[2]

    def configure_optimizers(self) -> Any:
        if self.mode == "stats":
            return None
        return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)


class KillAtEpoch(Callback):
    """Simulate a crash: end the process abruptly when ``epoch`` starts (after the previous checkpoint)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            os._exit(3)
