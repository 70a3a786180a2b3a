"""Per-epoch reseeding, so that a resumed run trains exactly like an uninterrupted one."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class EpochSeed(Callback):
    """Reseed torch, NumPy and ``random`` at the start of every training epoch from (seed, epoch).

    Lightning restores weights, optimisers and schedulers on resume, but not the global RNG
    streams, so shuffling, augmentation and the methods' own sampling (coordinate jitter, Feature
    Block Paste, diffusion noise) would differ after ``--ckpt_path last``. Deriving every epoch's
    streams from (seed, epoch) alone removes that difference. DataLoader workers derive their seeds
    from the torch stream at iterator creation, which happens after this hook. The training
    samplers' ``set_epoch`` is called with the current epoch (see ``EpochShuffleSampler``).
    """

    def __init__(self, seed: int = 0) -> None:
        """
        Args:
            seed: the run's seed (``seed_everything``); each epoch's streams derive from it.
        """
        self.seed = int(seed)

    @classmethod
    def from_environment(cls) -> "EpochSeed":
        """An EpochSeed with the seed ``seed_everything`` recorded in ``PL_GLOBAL_SEED`` (0 without one)."""
        try:
            return cls(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        except ValueError:
            return cls(0)

    def epoch_seed(self, epoch: int, rank: int) -> int:
        return (self.seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        seed = self.epoch_seed(trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device
        for sampler in _train_samplers(trainer):
            sampler.set_epoch(trainer.current_epoch)


def _train_samplers(trainer: Any) -> list[Any]:
    """Samplers of the training dataloaders that take ``set_epoch`` (e.g. ``EpochShuffleSampler``)."""
    from lightning.fabric.utilities.apply_func import apply_to_collection
    from torch.utils.data import DataLoader

    found: list[Any] = []

    def visit(loader: DataLoader) -> None:
        for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)) and sampler not in found:
                found.append(sampler)

    apply_to_collection(trainer.train_dataloader, DataLoader, visit)
    return found
