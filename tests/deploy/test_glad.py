"""GLAD exports to ``torch`` only: ONNX / OpenVINO are refused in one line that says why, and the torch
export (a pickled module: torch.export cannot capture its data-dependent stopping) scores like the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_bench.cli import ConfigError, main
from anomaly_bench.deploy.export import ExportError, export_model, export_module
from anomaly_bench.deploy.inferencer import Inferencer
from tests.conftest import REPO_ROOT

GLAD_DEMO = str(REPO_ROOT / "configs" / "demo" / "glad.yaml")


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "onnx,torch"])
def test_export_command_refuses_graph_formats_for_glad(fmt: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as caught:
        main(["export", "--config", GLAD_DEMO, "--ckpt_path", "last", "--format", fmt,
              "--trainer.default_root_dir", str(tmp_path)])
    message = str(caught.value)
    assert "GLAD exports to torch only" in message and "data-dependent stopping" in message and "\n" not in message
    assert capsys.readouterr().err.strip() == f"anomaly-bench: error: {message}"
    assert not any(tmp_path.iterdir())  # refused before anything was built or written


def _tiny_glad():
    from anomaly_bench.models.glad.lightning_model import GLAD

    torch.manual_seed(0)
    return GLAD(diffusion="tiny", tiny_image_size=32, unet_width=8, dino="tiny", dino_resolution=32,
                score_layers=[1, 2], ads_layer=2, ads_top_k=3, score_top_k=8, blur_sigma=1.0, guidance_scale=1.0,
                num_inference_steps=3, t_start=600, t_min=250).eval()


def test_glad_exports_to_torch_and_scores_like_the_model(tmp_path: Path) -> None:
    module = _tiny_glad()
    with pytest.raises(ExportError, match="data-dependent stopping"):
        export_module(module, {"openvino": tmp_path / "ov"}, 32)
    with pytest.raises(ExportError, match="data-dependent stopping"):
        export_model(module.model, tmp_path / "onnx", "onnx", 32, "minus_one_one")
    written = export_module(module, {"torch": tmp_path / "torch"}, 32)["torch"]
    assert written["torch_program"] == "pickled_module" and written["graphs"][0]["call"] == "images_and_categories"
    assert any("data-dependent stopping" in note for note in written["notes"])
    inferencer = Inferencer(tmp_path / "torch")
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    results = inferencer.predict_batch(images)
    batch = torch.from_numpy(np.stack([inferencer.preprocess(image)[0] for image in images]))
    with torch.no_grad():
        expected = module.model(batch, [None, None])
    np.testing.assert_allclose([r.score for r in results], expected.pred_score.numpy(), rtol=1e-5)
    np.testing.assert_allclose(results[0].anomaly_map_at_input, expected.anomaly_map[0].numpy(), rtol=1e-5, atol=1e-6)
