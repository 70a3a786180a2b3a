"""Perlin masks and DRAEM/MemSeg-style anomaly synthesis: binary masks, ranges, locality, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from anomaly_bench.data.io import DataError
from anomaly_bench.models.components.synthesis import (
    AUGMENTERS, AnomalySynthesizer, TextureFolder, augment, foreground_mask, perlin_mask, perlin_noise, shuffle_tiles,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size,scale", [((32, 32), (4, 4)), ((37, 50), (8, 2)), ((20, 20), (1, 32))])
def test_perlin_noise_any_size_is_bounded_and_seeded(size, scale):
    noise = perlin_noise(size, scale, gen(1))
    assert noise.shape == size
    assert noise.abs().max() <= 1.5 and noise.std() > 0.01
    assert torch.equal(noise, perlin_noise(size, scale, gen(1)))


def test_perlin_noise_is_zero_on_the_lattice():
    # gradient noise vanishes at lattice points: a property of Perlin noise, not of our constants
    noise = perlin_noise((32, 32), (4, 4), gen(2))
    assert torch.allclose(noise[::8, ::8], torch.zeros(4, 4), atol=1e-6)


def test_perlin_mask_is_binary_and_in_range():
    for seed in range(5):
        mask = perlin_mask((48, 40), generator=gen(seed))
        assert mask.shape == (48, 40)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="perlin_scales"):
        perlin_mask((8, 8), perlin_scales=(3, 1))


def test_synthesis_changes_pixels_only_inside_binary_masks():
    images = torch.rand(6, 3, 32, 32, generator=gen(3))
    result = AnomalySynthesizer(anomaly_prob=1.0)(images, generator=gen(4))
    assert result.images.shape == images.shape
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    assert bool(result.is_anomalous.all()) and bool((result.masks.flatten(1).sum(1) > 0).all())
    changed = (result.images - images).abs().sum(1) > 0
    assert not bool((changed & (result.masks == 0)).any())


def test_no_anomaly_probability_zero_returns_the_input():
    images = torch.rand(3, 3, 16, 16, generator=gen(5))
    result = AnomalySynthesizer(anomaly_prob=0.0)(images, generator=gen(6))
    assert torch.equal(result.images, images) and not bool(result.masks.any())


def test_foreground_mask_restricts_anomalies_to_the_object():
    images = torch.full((4, 3, 32, 32), 0.1)
    images[:, :, :, 16:] = 0.9  # bright object on the right half
    fg = foreground_mask(images[0], "otsu")
    assert bool(fg[:, 16:].all()) and not bool(fg[:, :16].any())
    assert torch.equal(foreground_mask(images[0], "otsu_inverted"), 1 - fg)
    result = AnomalySynthesizer(anomaly_prob=1.0)(images, ["otsu"] * 4, generator=gen(7))
    assert not bool(result.masks[:, :, :16].any())
    with pytest.raises(ValueError, match="foreground mode"):
        foreground_mask(images[0], "bright")


def test_shuffle_tiles_permutes_tiles():
    image = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16)
    shuffled = shuffle_tiles(image, grid=4, generator=gen(8))
    tiles = lambda x: sorted(x.reshape(3, 4, 4, 4, 4).permute(1, 3, 0, 2, 4).reshape(16, -1).tolist())  # noqa: E731
    assert not torch.equal(shuffled, image)
    assert tiles(shuffled) == tiles(image)


@pytest.mark.parametrize("index", range(len(AUGMENTERS)))
def test_each_augmenter_keeps_shape_and_range(index):
    image = torch.rand(3, 16, 16, generator=gen(index))
    out = AUGMENTERS[index](image, gen(index)).clamp(0, 1)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert augment(image, 3, gen(0)).shape == image.shape


def test_texture_folder_source(tmp_path: Path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"t{i}.png"), np.full((10, 12, 3), 40 * (i + 1), np.uint8))
    folder = TextureFolder(tmp_path)
    assert len(folder) == 2 and folder.sample((8, 9), gen(0)).shape == (3, 8, 9)
    synth = AnomalySynthesizer(texture_dir=tmp_path, anomaly_prob=1.0, texture_prob=1.0)
    assert synth(torch.rand(2, 3, 16, 16), generator=gen(1)).is_anomalous.all()


def test_bad_texture_folder_and_arguments_raise(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        TextureFolder(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        TextureFolder(tmp_path)
    with pytest.raises(ValueError, match="anomaly_prob"):
        AnomalySynthesizer(anomaly_prob=1.5)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        AnomalySynthesizer()(torch.rand(3, 16, 16))
