"""Each method's torch model runs on its own: imported with Lightning blocked, built tiny, it maps
images to an ``AnomalyOutput`` (issue 14: the nn.Module owns inference; export stands on it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

BLOCK_LIGHTNING = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
            raise ImportError(f"{name} is blocked: a torch model must not need Lightning")
        return None
sys.meta_path.insert(0, _Block())
import torch
torch.manual_seed(0)
from anomaly_bench.types import AnomalyOutput
"""

# (method, code that builds `model` and `images`; the model must be ready to score)
BUILDERS = {
    "crad": """
from anomaly_bench.models.crad.torch_model import CRADModel
model = CRADModel(backbone="tiny", layers=(1, 2), pretrained=False, image_size=32, fusion_blocks=1)
images = torch.randn(2, 3, 32, 32)
""",
    "grad": """
from anomaly_bench.models.grad.torch_model import BiGridGRADModel
model = BiGridGRADModel(backbone="tiny", pretrained=False, image_size=32, local_resolution=4,
                        global_resolution=2, fusion_blocks=1)
images = torch.randn(2, 3, 32, 32)
""",
    "glad": """
from anomaly_bench.models.glad.torch_model import GLADModel
model = GLADModel(diffusion="tiny", tiny_image_size=32, unet_width=8, dino="tiny", dino_resolution=32,
                  score_layers=[1, 2], ads_layer=2, score_top_k=4, blur_sigma=1.0, guidance_scale=1.0,
                  num_inference_steps=2, t_start=100, t_min=50)
images = torch.rand(2, 3, 32, 32) * 2 - 1
""",
    "patchdiff": """
from anomaly_bench.models.patchdiff.torch_model import PatchDiffGRADModel
model = PatchDiffGRADModel(categories=["part"], detectors=[{"input_size": 48, "levels": [5]}],
                           detector_width=0.125, generator_channels=4)
images = torch.rand(2, 3, 48, 48) * 2 - 1
""",
    "patchcore": """
from anomaly_bench.models.patchcore.torch_model import PatchCoreModel
model = PatchCoreModel(backbone="tiny", layers=(1, 2), pretrained=False, pretrain_embed_dim=32, embed_dim=16)
model.set_memory_bank(model.embed(torch.randn(2, 3, 32, 32)))
images = torch.randn(2, 3, 32, 32)
""",
}


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_torch_model_scores_images_without_lightning(method: str) -> None:
    script = BLOCK_LIGHTNING + textwrap.dedent(BUILDERS[method]) + textwrap.dedent("""
        model.eval()
        with torch.no_grad():
            out = model(images)
        assert isinstance(out, AnomalyOutput), type(out)
        assert out.anomaly_map.shape[0] == images.shape[0] and out.pred_score.shape == (images.shape[0],)
        assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.pred_score).all()
        assert not any(m.split(".")[0] == "lightning" for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
