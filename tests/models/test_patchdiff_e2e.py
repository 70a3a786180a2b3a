"""End-to-end PatchDiffGRAD fit on tiny LOCO-like synthetic images: far above chance, resumable."""

from __future__ import annotations

import os
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from anomaly_bench.models.patchdiff import PatchDiffGRAD
from anomaly_bench.types import collate_items

SIZE = 56


def _scene(squares: list[tuple[int, int]], rng: torch.Generator) -> torch.Tensor:
    """Grey textured background, a stripe and bright squares: a 'logical' layout.

    Normal images have one square at (8, 8). Anomalies (both logical, as in MVTec LOCO): the
    square somewhere else, or an additional square. Both look locally normal; only the
    coordinate channels tell them apart."""
    img = torch.full((3, SIZE, SIZE), -0.4) + 0.05 * torch.randn(3, SIZE, SIZE, generator=rng)
    img[:, 44:48, :] = 0.2
    for y, x in squares:
        img[0, y:y + 10, x:x + 10] = 0.8
        img[1:, y:y + 10, x:x + 10] = 0.3
    return img.clamp(-1, 1)


def _item(image: torch.Tensor, label: int, defect: str, i: int) -> dict:
    return {"image": image, "label": label, "mask": torch.zeros(SIZE, SIZE), "orig_size": (SIZE, SIZE),
            "category": "toy", "defect": defect, "path": f"{defect}_{i}.png"}


class ToyLoco(LightningDataModule):
    categories: ClassVar[list[str]] = ["toy"]

    def __init__(self) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(0)
        self.train = [_item(_scene([(8, 8)], rng), 0, "good", i) for i in range(16)]
        test = [_item(_scene([(8, 8)], rng), 0, "good", i) for i in range(10)]
        test += [_item(_scene([(30, 30)], rng), 1, "misplaced", i) for i in range(5)]
        test += [_item(_scene([(8, 8), (26, 36)], rng), 1, "extra", i) for i in range(5)]
        self.test = test

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True, collate_fn=collate_items)


TWO_DETECTORS = [{"input_size": SIZE, "levels": [5], "name": "level34"},
                 {"input_size": 40, "levels": [5], "name": "coarse"}]


def _model(tmp_path, **overrides) -> PatchDiffGRAD:
    args = {
        "detectors": [{"input_size": SIZE, "levels": [5], "name": "level34"}],
        "generator_channels": 8, "generator_steps": 6, "generator_batch_size": 4, "sampler": "ddim", "sampling_steps": 3,
        "samples_per_level": 6, "sampling_batch_size": 6, "detector_width": 0.125, "detector_steps": 50,
        "patches_per_image": 6, "images_per_group": 4, "inner_steps": 20, "blur_sigma": 1.0,
        "generated_dir": str(tmp_path / "generated"),
    }
    args.update(overrides)
    model = PatchDiffGRAD(**args)
    model.configure_callbacks = list  # a bare model: no metrics, pictures or run folders
    return model


def _trainer(tmp_path, max_epochs: int) -> Trainer:
    return Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                   num_sanity_val_steps=0)


def _image_auroc(model: PatchDiffGRAD, data: ToyLoco) -> float:
    batch = collate_items(data.test)
    model.eval()
    with torch.no_grad():
        out = model.score_batch(batch)
    assert out.anomaly_map.shape == (len(batch), SIZE, SIZE)
    return roc_auc_score(batch.label.numpy(), out.pred_score.numpy())


def _fit_and_check(tmp_path, **overrides) -> None:
    torch.manual_seed(0)
    data = ToyLoco()
    model = _model(tmp_path, **overrides)
    _trainer(tmp_path, max_epochs=100).fit(model, datamodule=data)
    assert model.pipeline_done
    generated = sorted(os.listdir(tmp_path / "generated" / "toy" / "level_5"))
    assert generated == [f"{i:05d}.png" for i in range(6)]
    assert bool(model.model.category("toy").fusion_ready)
    auroc = _image_auroc(model, data)
    assert auroc > 0.85, auroc


def test_fit_runs_the_whole_pipeline_and_detects_logical_anomalies(tmp_path):
    _fit_and_check(tmp_path)


@pytest.mark.slow
def test_fit_with_two_fused_detectors(tmp_path):
    _fit_and_check(tmp_path, detectors=TWO_DETECTORS, detector_steps=120)


def test_resume_continues_the_current_phase_and_reuses_samples(tmp_path):
    torch.manual_seed(0)
    data = ToyLoco()
    small = {"detectors": TWO_DETECTORS, "generator_steps": 2, "detector_steps": 8, "inner_steps": 2, "patches_per_image": 2}
    model = _model(tmp_path, **small)
    # 2 ticks per epoch x 2 steps: generator (2 steps), sample (1), then 3 of the 8 detector steps
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=data)
    phase, step = (int(v) for v in model.phase_progress)
    kinds = [p.kind for p in model.phases()]
    assert kinds[phase] == "detectors" and 0 < step < 8
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    sample = tmp_path / "generated" / "toy" / "level_5" / "00000.png"
    mtime = sample.stat().st_mtime_ns

    resumed = _model(tmp_path, **small)
    seen: list[tuple[int, int]] = []
    original = resumed._detector_step

    def spy(phase, cursor):
        seen.append(tuple(int(v) for v in resumed.phase_progress))
        original(phase, cursor)

    resumed._detector_step = spy
    _trainer(tmp_path, max_epochs=100).fit(resumed, datamodule=data, ckpt_path=str(ckpt))
    assert seen[0] == (phase, step)  # the same phase, the next step
    assert resumed.pipeline_done
    assert sample.stat().st_mtime_ns == mtime  # samples were not regenerated


def test_forward_and_errors(tmp_path):
    model = _model(tmp_path, categories=["toy"])
    out = model(torch.zeros(2, 3, SIZE, SIZE))
    assert out.anomaly_map.shape == (2, SIZE, SIZE) and out.pred_score.shape == (2,)
    with pytest.raises(KeyError, match="no model for category"):
        model.model.category("other")
    with pytest.raises(ValueError, match="beta_density"):
        _model(tmp_path, beta_density=0.0)
    with pytest.raises(ValueError, match="model.generator_coord_frequencies"):
        _model(tmp_path, generator_coord_frequencies=-1)
    two = _model(tmp_path, categories=["a", "b"])
    with pytest.raises(ValueError, match="single-category"):
        two(torch.zeros(1, 3, SIZE, SIZE))


def test_checkpoint_without_pixel_statistics_still_loads(tmp_path):
    """Checkpoints from before the per-location statistics load with neutral ones (mean 0, std 1)."""
    old = _model(tmp_path, categories=["toy"], detectors=TWO_DETECTORS)
    state = {k: v for k, v in old.state_dict().items() if ".pixel_stats_" not in k}
    checkpoint = {"state_dict": state, "patchdiff_categories": ["toy"]}
    new = _model(tmp_path, detectors=TWO_DETECTORS, map_fusion="pixel_standardized_sum")
    new.on_load_checkpoint(checkpoint)
    new.load_state_dict(checkpoint["state_dict"])  # strict: every buffer is there
    mean, std = new.model.category("toy").pixel_stats(1)
    assert mean.shape == (40, 40) and torch.all(mean == 0) and torch.all(std == 1)
    with pytest.raises(ValueError, match="model.map_fusion must be one of"):
        _model(tmp_path, map_fusion="pixel")
    with pytest.raises(ValueError, match="model.image_score must be one of"):
        _model(tmp_path, image_score="mean")
