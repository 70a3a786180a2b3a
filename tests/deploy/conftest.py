"""Tiny random models of every exportable method, each exported once per test session.

``Case`` holds a torch model, the folders it was exported to (``onnx`` and ``openvino``, one capture)
and how to run the torch model on a normalised batch for a category. CRAD goes through the Lightning
module (``export_module``) with thresholds set; PatchDiff is a unified model of two categories
(one graph each) with per-category thresholds; PatchCore is fitted and exported through the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_bench.deploy.export import export_formats, export_module
from anomaly_bench.metrics.thresholds import Thresholds

FORMATS = ("onnx", "openvino")


@dataclass
class Case:
    """A model exported to ``folders``; ``reference(batch, category)`` is the torch model's (map, score)."""

    name: str
    model: nn.Module
    folders: dict[str, Path]
    size: tuple[int, int]
    reference: Callable[[np.ndarray, str | None], tuple[np.ndarray, np.ndarray]]
    categories: list[str | None] = field(default_factory=lambda: [None])
    thresholds: dict[str, Thresholds] | None = None


def synthetic_images(size: tuple[int, int], count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB images at ``size``: a smooth texture, then the same texture with a bright blob."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    texture = np.stack([128 + 60 * np.sin(xx / 3.0 + c) * np.cos(yy / 4.0) for c in range(3)], axis=2)
    images = []
    for i in range(count):
        image = texture + rng.normal(0, 6, texture.shape)
        if i > 0:
            cy, cx, r = h // 2 + 3 * i - 3, w // 3 + 4 * i, 3 + 2 * i
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (255, 240, 10)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def _reference(model: nn.Module, routed: bool = False) -> Callable[[np.ndarray, str | None], tuple]:
    def run(batch: np.ndarray, category: str | None) -> tuple[np.ndarray, np.ndarray]:
        images = torch.from_numpy(batch)
        with torch.no_grad():
            out = model(images, [category] * len(images)) if routed else model(images)
        return out.anomaly_map.float().numpy(), out.pred_score.float().numpy()
    return run


def _folders(root: Path) -> dict[str, Path]:
    return {fmt: root / fmt for fmt in FORMATS}


@pytest.fixture(scope="session")
def crad_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    from anomaly_bench.data.transforms import to_tensor
    from anomaly_bench.models.crad.lightning_model import CRAD

    torch.manual_seed(0)
    module = CRAD(backbone="tiny", layers=(1, 2), pretrained=False, image_size=32, fusion_blocks=1).eval()
    batch = torch.stack([to_tensor(image, "imagenet") for image in synthetic_images((32, 32))])
    with torch.no_grad():
        out = module.model(batch)
    scores = np.sort(out.pred_score.numpy())
    # the image threshold sits between the two lowest scores: one image normal, the others anomalous
    thresholds = {"all": Thresholds(image=float(scores[:2].mean()), pixel=float(out.anomaly_map[0].median()),
                                    image_reference=float(scores[0]) - 1.0, source="test")}
    module.thresholds = thresholds
    folders = _folders(tmp_path_factory.mktemp("crad"))
    export_module(module, folders, (32, 32), check=False)
    return Case("crad", module.model, folders, (32, 32), _reference(module.model), thresholds=thresholds)


@pytest.fixture(scope="session")
def grad_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    from anomaly_bench.models.grad.torch_model import BiGridGRADModel

    torch.manual_seed(0)
    model = BiGridGRADModel(backbone="tiny", pretrained=False, image_size=32, local_resolution=4, global_resolution=2,
                            fusion_blocks=1).eval()
    folders = _folders(tmp_path_factory.mktemp("grad"))
    export_formats(model, folders, 32, "imagenet", check=False)
    return Case("grad", model, folders, (32, 32), _reference(model))


@pytest.fixture(scope="session")
def patchdiff_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    from anomaly_bench.models.patchdiff.torch_model import PatchDiffGRADModel

    torch.manual_seed(0)
    # one detector below the image size: the detector input is an antialiased downscale (rewritten for OpenVINO)
    model = PatchDiffGRADModel(categories=["bottle", "cable"], detectors=[{"name": "level34", "input_size": 40,
                                                                           "levels": [9]}],
                               detector_width=0.1, generator_channels=4, blur_sigma=1.0).eval()
    thresholds = {"bottle": Thresholds(image=-1e6, pixel=None), "cable": Thresholds(image=1e6, pixel=None)}
    folders = _folders(tmp_path_factory.mktemp("patchdiff"))
    export_formats(model, folders, 48, "minus_one_one", thresholds=thresholds, check=False)
    return Case("patchdiff", model, folders, (48, 48), _reference(model, routed=True), ["bottle", "cable"],
                thresholds)


# ------------------------------------------------------------------------------ PatchCore via the CLI
PATCHCORE_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
model:
  class_path: anomaly_bench.models.PatchCore
  init_args:
    backbone: tiny
    layers: [1, 2]
    pretrained: false
    pretrain_embed_dim: 16
    embed_dim: 16
    coreset_ratio: 0.2
data:
  class_path: anomaly_bench.data.MVTecAD
  init_args:
    category: all
    image_size: 32
    batch_size: 8
    num_workers: 0
    validation: train_holdout
    val_fraction: 0.5
"""


@dataclass
class PatchCoreRun:
    """A PatchCore fitted and exported (``onnx,openvino``) through the CLI."""

    config: Path
    args: list[str]
    run_dir: Path
    case: Case


@pytest.fixture(scope="session")
def patchcore_run(synth_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> PatchCoreRun:
    from anomaly_bench.cli import main
    from anomaly_bench.models.patchcore.lightning_model import PatchCore

    root = tmp_path_factory.mktemp("patchcore")
    config = root / "patchcore.yaml"
    config.write_text(PATCHCORE_CONFIG)
    args = ["--config", str(config), "--data.init_args.root", str(synth_mvtec),
            "--trainer.default_root_dir", str(root / "results")]
    main(["fit", *args])
    main(["export", *args, "--ckpt_path", "last", "--format", "onnx,openvino", "--check", "false"])
    run_dir = (root / "results" / "PatchCore" / "MVTecAD" / "all" / "latest").resolve()
    # the reference model comes from Lightning's own loader, not from the export command's
    module = PatchCore.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    case = Case("patchcore", module.model, {fmt: run_dir / "export" / fmt for fmt in FORMATS}, (32, 32),
                _reference(module.model), thresholds=module.thresholds)
    return PatchCoreRun(config, args, run_dir, case)


@pytest.fixture(scope="session")
def patchcore_case(patchcore_run: PatchCoreRun) -> Case:
    return patchcore_run.case
