"""A tiny AnomalyModule that proves the spine before (and independently of) the real methods.

mode="memory": a bank of raw 3x3 pixel patches from the training normals; the map is each pixel's
nearest-neighbour distance to the bank (a pixel-space PatchCore). No gradients, and the bank is
gathered over DDP ranks, so the result does not depend on how batches are split over processes
(the DDP test relies on that).
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
    def __init__(self, mode: str = "memory", lr: float = 0.05, noise: float = 0.2, bank_size: int = 20000,
                 hidden: int = 8) -> None:
        """
        Args:
            mode: ``memory`` (nearest-neighbour bank of 3x3 pixel patches) or ``learned`` (a conv denoiser).
            lr: SGD learning rate of the ``learned`` denoiser.
            noise: standard deviation of the noise the ``learned`` denoiser removes in training.
            bank_size: most patches kept in the ``memory`` bank.
            hidden: channels of the ``learned`` denoiser's hidden layer (changes the weights' shapes).
        """
        super().__init__()
        self.save_hyperparameters()
        if mode not in ("memory", "learned"):
            raise ValueError(f"TinyModel.mode must be 'memory' or 'learned', got {mode!r}")
        self.mode, self.lr, self.noise, self.bank_size = mode, lr, noise, bank_size
        self.net = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 3, 3, padding=1))
        self.register_buffer("bank", torch.empty(0, 27))
        self.automatic_optimization = mode == "learned"
        self._epoch_patches: list[Tensor] = []

    def forward(self, images: Tensor) -> AnomalyOutput:
        b, _, h, w = images.shape
        if self.mode == "memory":
            patches = F.unfold(images, 3, padding=1).transpose(1, 2).reshape(-1, 27)
            distances = torch.cdist(patches, self.bank).amin(1) if len(self.bank) else patches.norm(dim=1)
            amap = distances.view(b, 1, h, w)
        else:
            amap = (images - self.net(images)).abs().mean(1, keepdim=True)
        amap = F.avg_pool2d(amap, 3, stride=1, padding=1)[:, 0]
        return AnomalyOutput(anomaly_map=amap, pred_score=amap.flatten(1).amax(1))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images = batch.image[batch.label == LABEL_NORMAL]
        if self.mode == "memory":
            self._epoch_patches.append(F.unfold(images, 3, padding=1).transpose(1, 2).reshape(-1, 27).detach())
            return None
        noisy = images + self.noise * torch.randn_like(images)
        loss = F.mse_loss(self.net(noisy), images)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_start(self) -> None:
        # Lightning validates *before* on_train_epoch_end: build the bank first, or validation
        # (and the thresholds fitted on it) would score against last epoch's bank or an empty one
        self._build_bank()

    def on_train_epoch_end(self) -> None:
        self._build_bank()

    def _build_bank(self) -> None:
        if self.mode != "memory" or not self._epoch_patches:
            return
        patches = torch.cat(self._epoch_patches)
        self._epoch_patches = []
        if self.trainer.world_size > 1:  # every rank saw its own shard: pool them
            patches = self.all_gather(patches).reshape(-1, 27)
        # a deterministic, order-independent subsample: sort rows, then take an even stride
        order = torch.argsort(patches @ torch.linspace(1, 2, 27, device=patches.device, dtype=patches.dtype))
        patches = patches[order]
        stride = max(1, len(patches) // self.bank_size)
        self.bank = patches[::stride][: self.bank_size].contiguous()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        if prefix + "bank" in state_dict:  # the bank's size is only known after training
            self.bank = torch.empty_like(state_dict[prefix + "bank"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def configure_optimizers(self) -> Any:
        if self.mode == "memory":
            return None
        return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)


class KillAtEpoch(Callback):
    """Simulate a crash: end the process abruptly when ``epoch`` starts (after the previous checkpoint)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            os._exit(3)


class FailAtEpoch(Callback):
    """Simulate a fit that fails before its first checkpoint: raise when ``epoch`` starts."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"FailAtEpoch: simulated failure at epoch {self.epoch}")


class _PlainState(nn.Module):
    """A submodule whose extra state is a plain dict, as GLAD keeps its per-category tables."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[str, float] = {"fitted": 0.0}

    def get_extra_state(self) -> dict[str, float]:
        return dict(self.table)

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.table = dict(state)


class TinyModelWithTable(TinyModel):
    """``TinyModel`` plus a submodule whose state-dict entry is a dict, not a tensor."""

    def __init__(self, mode: str = "memory", lr: float = 0.05, noise: float = 0.2, bank_size: int = 20000,
                 hidden: int = 8) -> None:
        """
        Args:
            mode: as ``TinyModel``.
            lr: as ``TinyModel``.
            noise: as ``TinyModel``.
            bank_size: as ``TinyModel``.
            hidden: as ``TinyModel``.
        """
        super().__init__(mode, lr, noise, bank_size, hidden)
        self.state = _PlainState()
