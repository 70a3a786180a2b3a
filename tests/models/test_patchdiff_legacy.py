"""A PatchDiffGRAD checkpoint written by version 0.1 loads into today's class and scores exactly as it did.

The fixture (``tests/fixtures/legacy_v0_1``, see its README) is a two-detector model stopped before
its statistics phase: its state dict uses 0.1's module names (``category_models.<category>.…``),
lists its categories under the top-level ``patchdiff_categories`` key, stores zero fusion
statistics, and its hyper-parameters spell ``fusion`` (now ``map_fusion``), ``evaluator`` and
``visualizer`` (now callbacks on the trainer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_bench.compat import upgrade_checkpoint
from anomaly_bench.models.patchdiff.lightning_model import PatchDiffGRAD
from anomaly_bench.models.patchdiff.torch_model import PatchDiffGRADModel
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "legacy_v0_1"


@pytest.fixture()
def checkpoint() -> dict:
    return torch.load(FIXTURES / "patchdiffgrad.ckpt", map_location="cpu", weights_only=False)


def _load(checkpoint: dict) -> PatchDiffGRAD:
    upgrade_checkpoint(checkpoint, PatchDiffGRAD)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    model = PatchDiffGRAD(**hparams)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval()


def test_legacy_checkpoint_reproduces_its_outputs(checkpoint: dict) -> None:
    assert "category_models.pins.detectors.0.classifier.weight" in checkpoint["state_dict"]  # 0.1 names
    assert checkpoint["hyper_parameters"]["fusion"] == "pixel_standardized_sum"
    model = _load(checkpoint)
    assert model.model.categories == ["pins"]
    assert model.hparams.map_fusion == "pixel_standardized_sum"
    expected = np.load(FIXTURES / "expected_outputs.npz")
    images = torch.from_numpy(expected["patchdiffgrad_images"])
    with torch.no_grad():
        lightning_output = model(images)
        torch_output = model.model(images, ["pins", "pins"])
    for output in (lightning_output, torch_output):
        torch.testing.assert_close(output.anomaly_map, torch.from_numpy(expected["patchdiffgrad_map"]), rtol=0, atol=1e-6)
        torch.testing.assert_close(output.pred_score, torch.from_numpy(expected["patchdiffgrad_score"]), rtol=0, atol=1e-6)


def test_legacy_statistics_become_neutral_and_the_phase_is_kept(checkpoint: dict) -> None:
    """0.1 stored zeros before the statistics phase; they must not divide the maps by a 1e-6 floor."""
    zeros = checkpoint["state_dict"]["category_models.pins.fusion_stats"]
    assert not bool(checkpoint["state_dict"]["category_models.pins.fusion_ready"]) and torch.all(zeros == 0)
    model = _load(checkpoint)
    pins = model.model.category("pins")
    torch.testing.assert_close(pins.fusion_stats, torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 2))
    assert model.cursor().current.kind == "stats"  # resuming this checkpoint would compute them next
    images = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        raw = pins.score(images, map_fusion="sum").anomaly_map
        torch.testing.assert_close(pins.score(images, map_fusion="standardized_sum").anomaly_map, raw)


def test_the_torch_model_alone_reloads_its_own_state_dict(checkpoint: dict) -> None:
    """Without Lightning: a fresh PatchDiffGRADModel builds the saved categories from the state dict."""
    model = _load(checkpoint)
    options = {k: model.hparams[k] for k in ("detectors", "detector_width", "generator_channels",
                                             "generator_coord_frequencies", "blur_sigma", "map_fusion",
                                             "image_score")}
    fresh = PatchDiffGRADModel(**options)
    fresh.load_state_dict(model.model.state_dict(), strict=True)
    assert fresh.categories == ["pins"]
    images = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images).anomaly_map, model.model(images).anomaly_map)
    other = PatchDiffGRADModel(categories=["screws"], **options)
    with pytest.raises(ValueError, match="trained on categories"):
        other.load_state_dict(model.model.state_dict())
