"""A cache of frozen-backbone features per training image, keyed by everything they depend on.

CRAD (and any method on a frozen backbone) computes the same features of the same training image
every epoch when the training data is not augmented. The cache stores them after the first
epoch. Its key covers everything a cached value depends on, so it can never serve stale features:

- the image file's identity and content stamp (resolved path, size, modification time in ns,
  inode): a dataset regenerated at the same path gets new keys;
- the backbone's exact state (a hash of every weight and buffer): another seed's random backbone,
  other pretrained weights or another layer choice get new keys;
- how the pixels reached the backbone: the datamodule's normalisation and the input size.

The disk cache writes each entry atomically (temporary file + rename) and reads it with
``weights_only=True``; an unreadable entry is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anomaly_bench.atomic import atomic_path

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "none")
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def module_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, shapes, dtypes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(value.shape)}|{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")  # 0-d too
    return digest.hexdigest()


def file_stamp(path: str | os.PathLike[str]) -> str:
    """Resolved path plus size, modification time (ns) and inode: changes when the file does."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return f"{resolved}|missing"
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


class FeatureCache:
    """Frozen features of training images, from memory or disk after their first computation.

    Args:
        mode: ``auto`` (memory cache when the datamodule's ``deterministic_train`` is True, i.e. no
            random augmentation), ``memory``, ``disk`` or ``none``.
        directory: folder of the ``disk`` cache.
        dtype: ``float32`` | ``float16`` | ``bfloat16``, the dtype entries are stored in.
        owner: the method's name, for error messages.
    """

    def __init__(self, mode: str = "auto", directory: str | None = None, dtype: str = "float32",
                 owner: str = "model") -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"{owner} feature_cache must be one of {CACHE_MODES}, got {mode!r}")
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"{owner} feature_cache_dtype must be one of {tuple(CACHE_DTYPES)}, got {dtype!r}")
        if mode == "disk" and not directory:
            raise ValueError(f"{owner} feature_cache='disk' needs feature_cache_dir (a folder for the .pt files)")
        self.mode, self.directory, self.dtype, self.owner = mode, directory, CACHE_DTYPES[dtype], owner
        self.enabled = False
        self.context = ""
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------- set-up
    def start(self, trainer: Any, backbone: nn.Module, image_size: Any) -> None:
        """Decide whether the cache is on for this fit and fix the key's backbone/pixel part."""
        self.enabled = self._decide(getattr(trainer, "datamodule", None) if trainer is not None else None)
        if not self.enabled:
            return
        datamodule = getattr(trainer, "datamodule", None)
        normalization = getattr(datamodule, "resolved_normalization", None)
        self.context = f"{module_fingerprint(backbone)}|{normalization}|{tuple(image_size)}|{self.dtype}"
        self._memory.clear()

    def _decide(self, datamodule: Any) -> bool:
        if self.mode == "none":
            return False
        deterministic = getattr(datamodule, "deterministic_train", None)
        if self.mode == "auto":
            return deterministic is True
        if deterministic is False:
            raise ValueError(
                f"{self.owner} feature_cache={self.mode!r} but the datamodule applies random training augmentation "
                "(deterministic_train is False): cached features would freeze one augmented view. "
                "Use feature_cache: auto or none."
            )
        return True

    # ------------------------------------------------------------------------------ entries
    def key(self, path: str) -> str:
        return hashlib.blake2b(f"{self.context}|{file_stamp(path)}".encode(), digest_size=20).hexdigest()

    def _disk_file(self, key: str) -> Path:
        return Path(self.directory) / key[:2] / f"{key}.pt"  # type: ignore[arg-type]

    def _get(self, key: str) -> Tensor | None:
        if self.mode != "disk":
            return self._memory.get(key)
        path = self._disk_file(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged entry is recomputed, never trusted
            log.warning("%s feature cache: unreadable entry %s (%s); recomputing", self.owner, path, err)
            return None

    def _put(self, key: str, value: Tensor) -> None:
        value = value.detach().to("cpu", self.dtype).contiguous().clone()
        if self.mode != "disk":
            self._memory[key] = value
            return
        with atomic_path(self._disk_file(key), fsync=False) as tmp:
            torch.save(value, tmp)

    def features(self, batch: Any, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Features of a training batch: cached ones where present, ``compute(images)`` for the rest."""
        if not self.enabled:
            return compute(batch.image)
        if len(batch.path) != len(batch):
            raise ValueError(f"{self.owner} feature cache needs batch.path (one key per image); got "
                             f"{len(batch.path)} paths for {len(batch)} images")
        keys = [self.key(p) for p in batch.path]
        cached = [self._get(k) for k in keys]
        missing = [i for i, c in enumerate(cached) if c is None]
        if missing:
            fresh = compute(batch.image[missing])
            for j, i in enumerate(missing):
                self._put(keys[i], fresh[j])
                cached[i] = fresh[j].detach()
        self.misses += len(missing)
        self.hits += len(batch) - len(missing)
        device = batch.image.device
        return torch.stack([c.to(device, torch.float32) for c in cached])

    def clear(self) -> None:
        self._memory.clear()
