"""Training order as a function of (seed, epoch) alone, so that a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch drawn from a private generator reseeded by ``set_epoch``.

    A plain ``shuffle=True`` draws its seed from the global RNG at a moment that differs between a
    fresh and a resumed run. Lightning calls ``set_epoch`` before each epoch, but after resuming from
    an end-of-epoch checkpoint it passes the number of *processed* epochs (one less than the epoch
    about to run), so ``anomaly_bench.callbacks.EpochSeed`` calls ``set_epoch(trainer.current_epoch)``
    again at the epoch start; the permutation is drawn lazily, after that.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed((self.seed * 1_000_003 + self.epoch * 7919) % (2**63 - 1))

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.length, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.length
