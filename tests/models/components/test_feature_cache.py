"""The frozen-feature cache never serves stale features: its key covers the backbone's weights,
the datamodule's normalisation and size, and the image file's content stamp (issue 17, case 1)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_bench.models.components.feature_cache import FeatureCache, file_stamp, module_fingerprint
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.types import Batch


def _write(path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _batch(paths) -> Batch:
    n = len(paths)
    return Batch(image=torch.randn(n, 3, 32, 32), label=torch.zeros(n, dtype=torch.long), mask=torch.zeros(n, 32, 32),
                 orig_size=torch.full((n, 2), 32), category=["c"] * n, defect=["good"] * n, path=[str(p) for p in paths])


def _trainer(normalization: str = "imagenet") -> SimpleNamespace:
    return SimpleNamespace(datamodule=SimpleNamespace(deterministic_train=True, resolved_normalization=normalization))


class Counter:
    def __init__(self) -> None:
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return images.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_hit_needs_the_same_backbone_normalisation_and_file(tmp_path, mode: str) -> None:
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, f in enumerate(files):
        _write(f, 10 * i)
    backbone = TimmFeatureExtractor("tiny", (1, 2), pretrained=False)
    cache = FeatureCache(mode, str(tmp_path / "cache"))
    compute = Counter()
    cache.start(_trainer(), backbone, (32, 32))
    batch = _batch(files)
    first = cache.features(batch, compute)
    again = cache.features(batch, compute)
    assert compute.images == 3 and cache.hits == 3
    torch.testing.assert_close(first, again)

    # another random backbone (another seed): every entry is stale
    other = TimmFeatureExtractor("tiny", (1, 2), pretrained=False)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert module_fingerprint(other) != module_fingerprint(backbone)
    cache.start(_trainer(), other, (32, 32))
    cache.features(batch, compute)
    assert compute.images == 6

    # back to the first backbone, but another normalisation: stale too
    cache.start(_trainer("none"), backbone, (32, 32))
    cache.features(batch, compute)
    assert compute.images == 9

    # same backbone and normalisation, one file regenerated at the same path: only it is recomputed
    cache.start(_trainer(), backbone, (32, 32))
    stamp = file_stamp(files[1])
    time.sleep(0.01)
    _write(files[1], 200)
    os.utime(files[1], ns=(time.time_ns(), time.time_ns()))
    assert file_stamp(files[1]) != stamp
    if mode == "memory":  # a new fit starts with an empty memory cache; fill it from the old files' keys
        cache.features(_batch([files[0], files[2]]), compute)
        compute.images = 9
    cache.features(batch, compute)
    assert compute.images == 10


def test_a_damaged_disk_entry_is_recomputed(tmp_path) -> None:
    image = tmp_path / "a.png"
    _write(image, 5)
    cache = FeatureCache("disk", str(tmp_path / "cache"))
    cache.start(_trainer(), TimmFeatureExtractor("tiny", (1,), pretrained=False), (32, 32))
    compute = Counter()
    cache.features(_batch([image]), compute)
    entry = next((tmp_path / "cache").glob("**/*.pt"))
    entry.write_bytes(b"not a tensor")
    cache.features(_batch([image]), compute)
    assert compute.images == 2
