"""Exported ONNX and OpenVINO graphs give the torch model's maps and scores within a relative 1e-4.

For every exportable method (CRAD, bi-grid GRAD, PatchCore, PatchDiff GRAD with one graph per
category), on synthetic images already at the input size, run through the standalone inferencer's
runtime sessions. "Relative" is ``max |runtime - torch| / max |torch|`` per output.
"""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_bench.deploy.export import relative_difference
from anomaly_bench.deploy.inferencer import Inferencer
from tests.deploy.conftest import FORMATS, Case, synthetic_images

METHODS = ("crad", "grad", "patchcore", "patchdiff")
TOLERANCE = 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", METHODS)
def test_runtime_outputs_equal_the_torch_model(method: str, fmt: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(f"{method}_case")
    inferencer = Inferencer(case.folders[fmt])
    assert inferencer.format == fmt and inferencer.input_size == case.size
    images = synthetic_images(case.size)
    batch = np.stack([inferencer.preprocess(image)[0] for image in images])
    assert batch.shape == (len(images), 3, *case.size) and batch.dtype == np.float32
    for category in case.categories:
        maps, scores = inferencer.run(batch, category)
        expected_maps, expected_scores = case.reference(batch, category)
        assert maps.shape == expected_maps.shape and scores.shape == (len(images),)
        assert relative_difference(maps, expected_maps) <= TOLERANCE, (method, fmt, category)
        assert relative_difference(scores, expected_scores) <= TOLERANCE, (method, fmt, category)
        # the scores separate the images as the torch model's do (not a constant output)
        assert np.ptp(expected_scores) > 0 and np.argsort(scores).tolist() == np.argsort(expected_scores).tolist()


def test_per_category_graphs_are_different_networks(patchdiff_case: Case) -> None:
    inferencer = Inferencer(patchdiff_case.folders["onnx"])
    batch = np.stack([inferencer.preprocess(image)[0] for image in synthetic_images(patchdiff_case.size)])
    bottle = inferencer.run(batch, "bottle")[1]
    cable = inferencer.run(batch, "cable")[1]
    assert not np.allclose(bottle, cable)  # each category's own detectors, not one shared graph


def test_batch_size_is_dynamic(crad_case: Case) -> None:
    inferencer = Inferencer(crad_case.folders["onnx"])
    images = synthetic_images(crad_case.size, count=5, seed=3)
    one_by_one = [inferencer.predict(image).score for image in images]
    together = [r.score for r in inferencer.predict_batch(images, batch_size=5)]
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5)
    assert inferencer.metadata["input"]["batch"] == "dynamic"
