"""A GLAD checkpoint written by version 0.1 loads into today's classes and scores exactly as it did.

The fixture (``tests/fixtures/legacy_v0_1/``, see its README) holds a tiny GLAD fitted by 0.1, its
config, two seeded input images and the maps and scores 0.1 returned for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomaly_bench.compat import upgrade_checkpoint, upgrade_config
from anomaly_bench.models.glad import GLAD
from anomaly_bench.models.glad.lightning_model import CALIBRATION_CHECKPOINT_KEY, EXTRA_STATE_KEY

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "legacy_v0_1"


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def load_legacy() -> tuple[GLAD, dict]:
    checkpoint = torch.load(FIXTURES / "glad.ckpt", map_location="cpu", weights_only=False)
    upgrade_checkpoint(checkpoint, GLAD)  # the hyper-parameters must be today's before construction
    options = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = GLAD(**options)
    module.configure_callbacks = lambda: []
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module.eval(), checkpoint


def test_legacy_checkpoint_reproduces_its_maps_and_scores():
    saved = torch.load(FIXTURES / "glad.ckpt", map_location="cpu", weights_only=False)
    assert "grad_clip" in saved["hyper_parameters"] and CALIBRATION_CHECKPOINT_KEY in saved
    module, checkpoint = load_legacy()
    assert module.hparams.grad_clip_norm == saved["hyper_parameters"]["grad_clip"]
    assert "grad_clip" not in module.hparams
    # the calibrated τ moved from its own checkpoint key into the torch model's state
    assert module.model.table.calibrated_tau == pytest.approx(saved[CALIBRATION_CHECKPOINT_KEY])
    assert CALIBRATION_CHECKPOINT_KEY not in checkpoint and EXTRA_STATE_KEY in checkpoint["state_dict"]
    assert module.model.clamp_reconstruction  # 0.1 clamped its reconstruction before scoring

    expected = np.load(FIXTURES / "expected_outputs.npz")
    with torch.no_grad():
        output = module(torch.from_numpy(expected["glad_images"]))
    np.testing.assert_allclose(output.anomaly_map.numpy(), expected["glad_map"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(output.pred_score.numpy(), expected["glad_score"], rtol=1e-5, atol=1e-5)

    # the upgraded model saves in today's layout and reloads without the legacy path
    state = module.state_dict()
    again = GLAD(**{k: v for k, v in module.hparams.items()})
    again.load_state_dict(state, strict=True)
    assert again.model.clamp_reconstruction and again.model.table.calibrated_tau == module.model.table.calibrated_tau


def test_legacy_config_upgrades_to_the_new_option_names():
    config = yaml.safe_load((FIXTURES / "glad.yaml").read_text())
    notes = upgrade_config(config, lambda path: GLAD if path == "anomaly_bench.models.GLAD" else None)
    init_args = config["model"]["init_args"]
    assert "grad_clip" not in init_args and init_args["grad_clip_norm"] == 1.0
    assert any("grad_clip_norm" in note for note in notes)
    assert "evaluator" not in init_args and "visualizer" not in init_args
