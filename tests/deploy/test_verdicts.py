"""The inferencer's verdicts: label and mask come from the thresholds exported with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_bench.deploy.inferencer import Inferencer
from tests.deploy.conftest import Case, synthetic_images


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_label_and_mask_use_the_module_thresholds(crad_case: Case, fmt: str) -> None:
    inferencer = Inferencer(crad_case.folders[fmt])
    record = crad_case.thresholds["all"]
    results = inferencer.predict_batch(synthetic_images(crad_case.size))
    # the fixture put the image threshold between the two lowest scores
    assert sorted(r.label for r in results) == [0, 1, 1]
    for result in results:
        assert result.label == int(result.score >= record.image)
        assert result.image_threshold == record.image and result.pixel_threshold == record.pixel
        assert result.normalized_score == pytest.approx(record.normalised_image_score(result.score), rel=1e-9)
        np.testing.assert_array_equal(result.mask, result.anomaly_map >= record.pixel)
    assert 0 < results[0].mask.mean() < 1  # the pixel threshold is the first map's median


def test_map_and_mask_come_back_at_the_image_size(crad_case: Case) -> None:
    inferencer = Inferencer(crad_case.folders["onnx"])
    image = np.repeat(np.repeat(synthetic_images(crad_case.size)[1], 2, axis=0), 3, axis=1)  # 64 x 96
    result = inferencer.predict(image)
    assert result.anomaly_map_at_input.shape == crad_case.size
    assert result.anomaly_map.shape == result.mask.shape == (64, 96)
    expected = F.interpolate(torch.from_numpy(result.anomaly_map_at_input)[None, None], size=(64, 96),
                             mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.anomaly_map, expected, atol=1e-5)
    np.testing.assert_array_equal(result.mask, result.anomaly_map >= crad_case.thresholds["all"].pixel)


def test_each_category_uses_its_own_thresholds(patchdiff_case: Case) -> None:
    inferencer = Inferencer(patchdiff_case.folders["openvino"])
    image = synthetic_images(patchdiff_case.size)[0]
    bottle, cable = inferencer.predict(image, "bottle"), inferencer.predict(image, "cable")
    assert (bottle.label, cable.label) == (1, 0)  # thresholds -1e6 and 1e6
    assert bottle.image_threshold == -1e6 and cable.image_threshold == 1e6
    assert bottle.mask is None and cable.mask is None  # no pixel thresholds were fitted


def test_without_thresholds_there_are_no_verdicts(grad_case: Case) -> None:
    inferencer = Inferencer(grad_case.folders["onnx"])
    result = inferencer.predict(synthetic_images(grad_case.size)[1])
    assert inferencer.thresholds is None
    assert result.label is None and result.mask is None and result.normalized_score is None
    assert np.isfinite(result.score) and result.anomaly_map.shape == grad_case.size
