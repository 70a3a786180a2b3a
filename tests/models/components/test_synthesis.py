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
    out = AUGMENTERS[index](image, gen(index))
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1, AUGMENTERS[index].__name__
    assert not torch.allclose(out, image, atol=1e-3), f"{AUGMENTERS[index].__name__} left the image unchanged"
    assert augment(image, 3, gen(0)).shape == image.shape


def _draw(seed: int) -> float:
    """The first uniform [0, 1) draw an augmenter makes from gen(seed)."""
    return float(torch.rand(1, generator=gen(seed)))


def _augmenter(name: str):
    return next(a for a in AUGMENTERS if a.__name__ == name)


def test_the_ten_augmenters_are_the_draem_memseg_set():
    assert sorted(a.__name__ for a in AUGMENTERS) == sorted(
        ["_gamma", "_brightness", "_sharpness", "_hue_saturation", "_solarize", "_posterize", "_invert",
         "_autocontrast", "_equalize", "_rotate"])


def test_gamma_raises_each_channel_to_one_power_in_half_to_two():
    image = torch.rand(3, 8, 8, generator=gen(1)) * 0.9 + 0.05
    out = _augmenter("_gamma")(image, gen(2))
    powers = (out.log() / image.log()).flatten(1)
    expected = 0.5 + 1.5 * torch.rand(3, generator=gen(2))
    assert torch.allclose(powers, expected[:, None].expand_as(powers), atol=1e-4)


def test_brightness_is_one_gain_and_one_offset_then_clipped():
    image = torch.linspace(0.2, 0.8, 3 * 8 * 8).reshape(3, 8, 8)  # no pixel reaches a clip
    out = _augmenter("_brightness")(image, gen(3))
    g = gen(3)
    gain, offset = 0.8 + 0.4 * float(torch.rand(1, generator=g)), (-30 + 60 * float(torch.rand(1, generator=g))) / 255
    assert torch.allclose(out, image * gain + offset, atol=1e-6)
    assert _augmenter("_brightness")(torch.ones(3, 4, 4), gen(3)).max() <= 1


def test_solarize_inverts_exactly_the_pixels_at_or_above_its_threshold():
    image = torch.linspace(0, 1, 3 * 16 * 16).reshape(3, 16, 16)
    out = _augmenter("_solarize")(image, gen(4))
    threshold = (32 + 96 * _draw(4)) / 255
    high = image >= threshold
    assert torch.allclose(out[high], 1 - image[high]) and torch.equal(out[~high], image[~high])


def test_posterize_keeps_only_the_top_bits():
    image = torch.rand(3, 16, 16, generator=gen(5))
    out = _augmenter("_posterize")(image, gen(6))
    bits = int(torch.randint(1, 8, (1,), generator=gen(6)))
    levels = (out * 255).round().to(torch.int64)
    assert (levels % 2 ** (8 - bits) == 0).all()
    assert len(levels.unique()) <= 2 ** bits


def test_invert_autocontrast_and_equalize_known_answers():
    image = torch.rand(3, 16, 16, generator=gen(7)) * 0.5 + 0.2  # range 0.2..0.7
    assert torch.allclose(_augmenter("_invert")(image, None), 1 - image)
    stretched = _augmenter("_autocontrast")(image, None)
    assert torch.allclose(stretched.flatten(1).amin(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(stretched.flatten(1).amax(1), torch.ones(3), atol=1e-6)
    # autocontrast is a per-channel affine stretch: order and ratios of differences are kept
    low, high = image.flatten(1).amin(1), image.flatten(1).amax(1)
    assert torch.allclose(stretched, (image - low[:, None, None]) / (high - low)[:, None, None], atol=1e-5)
    # histogram equalisation: a monotone map per channel whose output spreads over the whole range
    # (64 x 64: PIL's rule leaves images of <= 256 pixels unchanged, its step rounds to 0)
    large = torch.rand(3, 64, 64, generator=gen(7)) * 0.5 + 0.2
    equalized = _augmenter("_equalize")(large, None)
    for c in range(3):
        order = large[c].flatten().argsort()
        assert (equalized[c].flatten()[order].diff() >= 0).all()
        assert equalized[c].max() == 1.0 and equalized[c].min() < 0.05


def test_hue_and_saturation_leave_greys_grey_and_move_colours():
    grey = torch.rand(1, 8, 8, generator=gen(8)).expand(3, 8, 8).clone()
    assert torch.allclose(_augmenter("_hue_saturation")(grey, gen(9)), grey, atol=1e-5)
    colour = torch.zeros(3, 8, 8)
    colour[0] = 0.9
    colour[1] = 0.2
    colour[2] = 0.1
    assert not torch.allclose(_augmenter("_hue_saturation")(colour, gen(9)), colour, atol=1e-2)


def test_sharpness_leaves_flat_images_alone_and_changes_edges():
    flat = torch.full((3, 8, 8), 0.4)
    assert torch.allclose(_augmenter("_sharpness")(flat, gen(10)), flat)
    edge = torch.zeros(3, 8, 8)
    edge[:, :, 4:] = 0.8
    edge[:, 3:5, 2:6] = 0.5
    assert not torch.allclose(_augmenter("_sharpness")(edge, gen(10)), edge, atol=1e-3)


def test_rotate_turns_the_image_about_its_centre_by_up_to_45_degrees():
    import math

    image = torch.zeros(3, 33, 33)
    image[:, 16, 28] = 1.0  # a dot 12 px right of the centre (16, 16)
    out = _augmenter("_rotate")(image, gen(11))
    angle = -45 + 90 * _draw(11)  # degrees, counter-clockwise
    weights = out[0]
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    cy, cx = float((ys * weights).sum() / weights.sum()), float((xs * weights).sum() / weights.sum())
    turn = math.radians(angle)
    assert (cy, cx) == pytest.approx((16 - 12 * math.sin(turn), 16 + 12 * math.cos(turn)), abs=0.6)
    assert out[:, 0, 0].eq(0).all()  # the corners are filled with black


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
