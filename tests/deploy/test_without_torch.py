"""The standalone inferencer imports and runs with torch and Lightning blocked (a fresh interpreter
whose import system refuses them), and gives the same results as in a process that has them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_bench.deploy.inferencer import Inferencer
from tests.conftest import REPO_ROOT
from tests.deploy.conftest import Case, synthetic_images

BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "torchvision"):
            raise ImportError(f"{name} is blocked: the inferencer must not need it")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_inferencer_runs_without_torch_or_lightning(crad_case: Case, fmt: str, tmp_path: Path) -> None:
    big = np.repeat(np.repeat(synthetic_images(crad_case.size)[2], 3, axis=0), 2, axis=1)  # 96 x 64: resized
    image_file = tmp_path / "part.png"
    Image.fromarray(big).save(image_file)
    script = BLOCK + textwrap.dedent(f"""
        import json
        import numpy as np
        from anomaly_bench.deploy import Inferencer
        from anomaly_bench.deploy.predictions import write_predictions
        inferencer = Inferencer({str(crad_case.folders[fmt])!r}, resize_backend="numpy")
        from_file = inferencer.predict({str(image_file)!r})
        from_array = inferencer.predict(np.asarray(__import__("PIL.Image").Image.open({str(image_file)!r})))
        csv_path, _ = write_predictions(inferencer, [__import__("pathlib").Path({str(image_file)!r})],
                                        {str(tmp_path / "out")!r})
        assert not any(m.split(".")[0] in ("torch", "lightning") for m in sys.modules)
        print(json.dumps({{"score": from_file.score, "array_score": from_array.score, "label": from_file.label,
                           "mask_pixels": int(from_file.mask.sum()), "shape": list(from_file.anomaly_map.shape),
                           "csv": csv_path.read_text()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = Inferencer(crad_case.folders[fmt], resize_backend="numpy").predict(image_file)
    assert got["score"] == pytest.approx(expected.score, rel=1e-6)
    assert got["array_score"] == pytest.approx(expected.score, rel=1e-6)
    assert got["label"] == expected.label and got["mask_pixels"] == int(expected.mask.sum())
    assert got["shape"] == [96, 64]
    assert "part.png" in got["csv"] and "masks/all/part.png" in got["csv"]
    assert (tmp_path / "out" / "masks" / "all" / "part.png").is_file()
