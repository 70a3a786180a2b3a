"""Detector training patches and the paper's per-category augmentation defaults."""

import pytest
import torch

from anomaly_bench.models.patchdiff.generator import coordinate_map
from anomaly_bench.models.patchdiff.patches import (
    AugmentationSpec,
    augment,
    color_jitter,
    make_patch_batch,
    random_crops,
    resolve_augmentation,
)


def test_paper_augmentation_tables():
    assert resolve_augmentation("cable", None) == AugmentationSpec(hflip=False, vflip=False)
    assert resolve_augmentation("breakfast_box", None).hflip is False
    toothbrush = resolve_augmentation("toothbrush", None)
    assert toothbrush.hflip and not toothbrush.vflip
    pushpins = resolve_augmentation("pushpins", None)
    assert pushpins.hflip and pushpins.vflip and pushpins.rotation_degrees == 5.0
    assert pushpins.jitter_p == 0.2 and pushpins.jitter_normal == 0.05 and pushpins.jitter_generated == 0.5
    custom = resolve_augmentation("pushpins", {"default": {"rotation_degrees": 0}, "pushpins": {"vflip": False}})
    assert custom.rotation_degrees == 0 and custom.vflip is False and custom.hflip is True
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        resolve_augmentation("pushpins", {"pushpins": {"flip": True}})


def test_crops_keep_content_and_coordinates_aligned():
    h = w = 50
    coords = coordinate_map(h, w)
    # an image whose channels encode the pixel position lets us check where each crop came from
    image = torch.cat([coords, coords[:1]], dim=0)[None].repeat(2, 1, 1, 1)
    batch = make_patch_batch(image, image, [image], coords, per_image=6, size=34)
    assert batch.positives.shape == (12, 5, 34, 34)
    assert batch.shuffled.shape == (12, 5, 34, 34)
    assert batch.generated.shape == (12, 5, 34, 34)
    assert batch.negatives.shape == (24, 5, 34, 34)
    # positives and generated: content (x, y) equals the coordinate channels
    assert torch.allclose(batch.positives[:, :2], batch.positives[:, 3:])
    assert torch.allclose(batch.generated[:, :2], batch.generated[:, 3:])
    # shuffled: content and coordinates come from independent windows (some differ)
    mismatch = (batch.shuffled[:, :2] - batch.shuffled[:, 3:]).abs().flatten(1).amax(1)
    assert (mismatch > 1e-6).any()


def test_random_crops_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than"):
        random_crops(torch.zeros(1, 3, 20, 20), 1, 34)


def test_augment_and_jitter_keep_range_and_shape():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 40, 40) * 2 - 1
    out = augment(images, AugmentationSpec(), generated=True)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(color_jitter(images, 0.5, p=0.0), images)
    jittered = color_jitter(images, 0.5, p=1.0)
    assert not torch.allclose(jittered, images)
    none = AugmentationSpec(hflip=False, vflip=False, rotation_degrees=0, jitter_p=0)
    assert torch.equal(augment(images, none, generated=False), images)
