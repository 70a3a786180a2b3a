"""Training order as a function of (seed, epoch) alone, so that a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch drawn from a private generator reseeded by ``set_epoch``.

    Lightning calls ``set_epoch`` before every training epoch, also on the first epoch after
    ``--ckpt_path last``; a plain ``shuffle=True`` draws its seed from the global RNG at a moment
    that differs between a fresh and a resumed run. Passing the same ``generator`` to the DataLoader
    keeps iterator creation (worker base seeds) off the global RNG too.
    """

    def __init__(self, length: int, seed: int, generator: torch.Generator) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.generator = generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed((self.seed * 1_000_003 + self.epoch * 7919) % (2**63 - 1))

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.length, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.length
