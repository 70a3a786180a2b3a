"""Cache of decoded, resized samples so that epochs after the first decode nothing.

Decoding a 1024-px PNG or a 3000-px JPEG costs 10-100 ms, resizing it to 256 px almost nothing, so
a model that trains for many epochs spends most of its data time re-decoding the same files. The
cache keeps the *resized* uint8 image, the binary mask, the native size and each mask file's value.

``memory``: one set of tensors in shared memory, allocated once per dataset in the main process.
DataLoader workers (fork or spawn: torch passes shared tensors by handle) write an entry the first
time they decode it and every worker reads it afterwards, so the cache is filled exactly once
however many workers there are and however often they are restarted.
``disk``: the same, plus one ``.npz`` per sample under ``cache_dir`` keyed by file path, size,
modification time and target size, so a second run (or another process) skips decoding too.
``none``: decode every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from anomaly_bench.types import Sample

log = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk", "none")
_CACHE_VERSION = "1"


class SampleCache:
    """Fixed-size cache for the samples of one dataset (index ``i`` = ``samples[i]``)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        size_hw: tuple[int, int],
        mode: str = "memory",
        cache_dir: str | Path | None = None,
    ) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
        if mode == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir (a folder for the .npz files)")
        self.mode = mode
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._keys = [self._key(s) for s in samples] if mode == "disk" else []
        n = len(samples)
        h, w = self.size_hw
        channels = max([len(s.mask_paths) for s in samples] + [1])
        self._shared = False
        self._local: dict[int, tuple[np.ndarray, np.ndarray, tuple[int, int], list[int]]] = {}
        if mode == "none" or n == 0:
            return
        needed = n * h * w * 4 + n * (2 * 4 + channels * 4 + 1)
        if not _shared_memory_fits(needed):
            log.warning(
                "image cache of %.1f MB does not fit in shared memory; each DataLoader worker keeps "
                "its own copy instead (use persistent workers)", needed / 1e6,
            )
            return
        # empty(): pages are only committed when written, so an unused cache costs nothing
        self.images = torch.empty((n, h, w, 3), dtype=torch.uint8).share_memory_()
        self.masks = torch.empty((n, h, w), dtype=torch.uint8).share_memory_()
        self.native = torch.zeros((n, 2), dtype=torch.int32).share_memory_()
        self.values = torch.zeros((n, channels), dtype=torch.int32).share_memory_()
        self.filled = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._shared = True

    # ------------------------------------------------------------------------------ public
    def get(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], list[int]] | None:
        """``(image [h,w,3], mask [h,w], native (H,W), mask values)`` or None on a miss."""
        if self.mode == "none":
            return None
        if self._shared and bool(self.filled[index]):
            n_values = int(self.values.shape[1])
            values = self.values[index].tolist()[:n_values]
            return (self.images[index].numpy(), self.masks[index].numpy(),
                    (int(self.native[index, 0]), int(self.native[index, 1])), values)
        if not self._shared and index in self._local:
            return self._local[index]
        if self.mode == "disk":
            entry = self._read_disk(index)
            if entry is not None:
                self._store_memory(index, *entry)
                return entry
        return None

    def put(self, index: int, image: np.ndarray, mask: np.ndarray, native_hw: tuple[int, int],
            values: list[int]) -> None:
        if self.mode == "none":
            return
        self._store_memory(index, image, mask, native_hw, values)
        if self.mode == "disk":
            self._write_disk(index, image, mask, native_hw, values)

    @property
    def filled_count(self) -> int:
        if self._shared:
            return int(self.filled.sum())
        return len(self._local)

    # ----------------------------------------------------------------------------- helpers
    def _store_memory(self, index: int, image: np.ndarray, mask: np.ndarray,
                      native_hw: tuple[int, int], values: list[int]) -> None:
        if not self._shared:
            self._local[index] = (image, mask, native_hw, list(values))
            return
        self.images[index] = torch.from_numpy(np.ascontiguousarray(image))
        self.masks[index] = torch.from_numpy(np.ascontiguousarray(mask))
        self.native[index] = torch.as_tensor(native_hw, dtype=torch.int32)
        row = list(values)[: self.values.shape[1]]
        self.values[index, : len(row)] = torch.as_tensor(row, dtype=torch.int32) if row else 0
        self.filled[index] = 1  # last: readers never see a half-written entry as filled

    def _key(self, sample: Sample) -> str:
        parts = [_CACHE_VERSION, f"{self.size_hw}"]
        for path in (sample.image_path, *sample.mask_paths):
            stat = os.stat(path) if os.path.exists(path) else None
            parts.append(f"{os.path.abspath(path)}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def _disk_path(self, index: int) -> Path:
        assert self.cache_dir is not None
        key = self._keys[index]
        return self.cache_dir / key[:2] / f"{key}.npz"

    def _read_disk(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], list[int]] | None:
        path = self._disk_path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return (data["image"], data["mask"], (int(data["native"][0]), int(data["native"][1])),
                        [int(v) for v in data["values"]])
        except Exception:  # a half-written file from an interrupted run: decode again
            return None

    def _write_disk(self, index: int, image: np.ndarray, mask: np.ndarray,
                    native_hw: tuple[int, int], values: list[int]) -> None:
        path = self._disk_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, image=image, mask=mask, native=np.asarray(native_hw, dtype=np.int64),
                 values=np.asarray(values, dtype=np.int64))
        os.replace(tmp, path)  # atomic: concurrent workers never read a partial file


def _shared_memory_fits(n_bytes: int) -> bool:
    """True if ``n_bytes`` fit comfortably in /dev/shm (where torch puts shared tensors on Linux)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return True  # other platforms: torch uses other mechanisms
    try:
        return n_bytes < 0.8 * shutil.disk_usage(shm).free
    except OSError:
        return True
