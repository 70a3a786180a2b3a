"""How sharp the generated images are next to the data: the measure the detector phase logs.

A PatchDiff trained briefly, or sampled in few DDIM steps, draws images smoother than the data
(synthetic granite, demo config: 0.70 of the normals' fine detail). The detector, a classifier of
normal vs generated patches, then learns "smooth = anomalous" (README, "Why maps pointed away").
"""

from __future__ import annotations

import logging

import pytest
import torch

from anomaly_bench.models.components.blur import gaussian_blur
from anomaly_bench.models.patchdiff import storage
from anomaly_bench.models.patchdiff.lightning_model import PatchDiffGRAD
from anomaly_bench.models.patchdiff.training_data import (
    DETAIL_SIGMA, detail_band, detail_energy, match_detail, resized_uint8,
)

SIZE = 48


def _speckle(count: int, seed: int, smooth: float = 0.0) -> torch.Tensor:
    """uint8 grey speckle textures; ``smooth`` > 0 blurs them like a PatchDiff that draws too smooth."""
    noise = 0.3 * torch.randn(count, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    if smooth:
        noise = gaussian_blur(noise, smooth)
    return storage.to_uint8(noise[:, None].repeat(1, 3, 1, 1).clamp(-1, 1))


def test_detail_energy_is_the_mean_magnitude_of_the_finest_band_by_hand():
    images = torch.zeros(2, 3, SIZE, SIZE)
    images[1, :, ::2, :] = 0.5  # stripes of period 2 px: almost entirely fine detail
    smooth, detail = detail_band(images)
    torch.testing.assert_close(smooth + detail, images)
    expected = (images - gaussian_blur(images.flatten(0, 1), DETAIL_SIGMA).view_as(images)).abs().mean(dim=(1, 2, 3))
    energy = detail_energy(storage.to_uint8(images), torch.device("cpu"))
    torch.testing.assert_close(energy, expected, atol=5e-3, rtol=0)  # uint8 rounding
    assert energy[0] < 1e-6  # a flat image has none
    assert energy[1] > 0.2


def test_the_detector_phase_measures_and_warns_about_smooth_samples(tmp_path, caplog):
    detectors = [{"input_size": 40, "levels": [5], "name": "fine"}]
    model = PatchDiffGRAD(categories=["granite"], detectors=detectors, generator_channels=4, detector_width=0.125,
                          samples_per_level=6, generated_dir=str(tmp_path))
    model._normal_images = {"granite": _speckle(8, 0)}
    drawn = _speckle(6, 1, smooth=0.8)
    storage.write_images(storage.level_dir(tmp_path, "granite", 5), 0, storage.to_float(drawn))
    with caplog.at_level(logging.INFO, logger="anomaly_bench.models.patchdiff"):
        data = model._training_images("granite").detectors[0]
    assert data.normal.shape == (8, 3, 40, 40) and data.generated[0].shape == (6, 3, 40, 40)
    cpu = torch.device("cpu")
    expected = float(detail_energy(data.generated[0], cpu).mean() / detail_energy(data.normal, cpu).mean())
    assert data.detail_ratio[0] == pytest.approx(expected, abs=1e-6) and expected < 0.75
    assert "fine-detail ratio level 5" in caplog.text and "'smooth = anomalous'" in caplog.text


def test_matching_the_detail_makes_smooth_samples_as_sharp_as_the_normals(tmp_path, caplog):
    detectors = [{"input_size": 40, "levels": [5], "name": "fine"}]
    model = PatchDiffGRAD(categories=["granite"], detectors=detectors, generator_channels=4, detector_width=0.125,
                          samples_per_level=6, generated_dir=str(tmp_path), match_sample_detail=True)
    model._normal_images = {"granite": _speckle(8, 0)}
    drawn = _speckle(6, 1, smooth=0.8)
    storage.write_images(storage.level_dir(tmp_path, "granite", 5), 0, storage.to_float(drawn))
    with caplog.at_level(logging.INFO, logger="anomaly_bench.models.patchdiff"):
        data = model._training_images("granite").detectors[0]
    cpu = torch.device("cpu")
    matched = float(detail_energy(data.generated[0], cpu).mean() / detail_energy(data.normal, cpu).mean())
    assert data.detail_ratio[0] < 0.75  # measured as sampled ...
    assert matched == pytest.approx(1.0, abs=0.03)  # ... and what the detector trains on is as sharp as the data
    smooth_before = detail_band(storage.to_float(resized_uint8(drawn, 40, cpu)))[0]
    smooth_after = detail_band(storage.to_float(data.generated[0]))[0]
    coarse_before, coarse_after = (gaussian_blur(x.flatten(0, 1), 2.0) for x in (smooth_before, smooth_after))
    # the content stays: the coarse image moves by under 1.3 grey levels while the fine band grows ~1.5x
    assert float((coarse_after - coarse_before).abs().mean()) < 0.01
    assert "(matched to 1)" in caplog.text and "'smooth = anomalous'" not in caplog.text
    with pytest.raises(ValueError, match="reference detail energy must be > 0"):
        match_detail(data.generated[0], 0.0, cpu)
