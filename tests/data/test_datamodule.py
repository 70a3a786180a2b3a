"""Shared datamodule behaviour: normalisation, augmentations, validation modes, caching, predict."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch

import anomaly_bench.data.dataset as dataset_module
from anomaly_bench.data import AnomalyDataModule, Folder, MVTecAD, MVTecLOCO
from anomaly_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .conftest import SMALL


def _dm(root, **kw):
    kw = {"image_size": 32, "batch_size": 64, "num_workers": 0, **kw}
    return MVTecAD(root=root, **kw)


def test_normalizations(synth_root):
    root = synth_root("mvtec")
    raw = _dm(root, category="ring", normalization="none")
    raw.setup("fit")
    x = next(iter(raw.train_dataloader())).image
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    for name, expected in (
        ("imagenet", (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)),
        ("minus_one_one", x * 2 - 1),
    ):
        dm = _dm(root, category="ring", normalization=name)
        dm.setup("fit")
        dm_x = torch.cat([b.image for b in dm.train_dataloader()])
        # the train loader shuffles: compare the sorted values
        assert torch.allclose(dm_x.flatten().sort().values, expected.flatten().sort().values, atol=1e-5)


def test_normalization_asked_from_the_model(synth_root):
    class Model:
        input_normalization = "minus_one_one"

    class Trainer:
        lightning_module = Model()

    dm = _dm(synth_root("mvtec"), category="ring")
    assert dm.resolved_normalization == "imagenet"  # no trainer: ImageNet
    dm.trainer = Trainer()
    dm.setup("fit")
    assert dm.resolved_normalization == "minus_one_one"
    assert float(next(iter(dm.train_dataloader())).image.min()) >= -1.0


def test_augmentation_specs_and_deterministic_train(synth_root):
    root = synth_root("mvtec")
    plain = _dm(root, category="ring")
    assert plain.deterministic_train
    specs = [{"class_path": "HorizontalFlip", "init_args": {"p": 1.0}},
             {"class_path": "albumentations.VerticalFlip", "init_args": {"p": 1.0}}]
    aug = _dm(root, category="ring", normalization="none", train_augmentations=specs)
    assert not aug.deterministic_train
    aug.setup("fit")
    aug.setup("test")
    ref = _dm(root, category="ring", normalization="none")
    ref.setup("fit")
    a, r = aug.dataset("train")[0], ref.dataset("train")[0]
    assert torch.allclose(a["image"], r["image"].flip(-1).flip(-2))
    import albumentations as A

    from anomaly_bench.data.transforms import build_augmentations

    assert isinstance(build_augmentations(["RandomRotate90"]).transforms[0], A.RandomRotate90)  # bare name
    assert build_augmentations([]) is None and build_augmentations(None) is None
    # test items are never augmented
    assert torch.allclose(aug.dataset("test")[0]["image"], ref.dataset("test")[0]["image"])


def test_augmentation_moves_the_mask_with_the_image(synth_root):
    """Masks follow geometric transforms (checked on an anomalous item through the train path)."""
    root = synth_root("mvtec")
    dm = _dm(root, category="ring", train_augmentations=[{"class_path": "HorizontalFlip", "init_args": {"p": 1.0}}])
    dm.setup("fit")
    dm.setup("test")
    anomalous = next(s for s in dm.samples("test") if s.label == 1)
    from anomaly_bench.data.dataset import AnomalyDataset

    train_like = AnomalyDataset([anomalous], (32, 32), augment=dm.dataset("train").augment)
    plain = AnomalyDataset([anomalous], (32, 32))
    assert torch.equal(train_like[0]["mask"], plain[0]["mask"].flip(-1))
    assert plain[0]["mask"].sum() > 0


def test_train_holdout_is_seeded_per_category_and_disjoint(synth_root):
    root = synth_root("mvtec")
    dm = _dm(root, validation="train_holdout", val_fraction=0.34, seed=3)
    dm.setup("fit")
    train, val = dm.samples("train"), dm.samples("val")
    # at least MIN_HOLDOUT (10) per category where that leaves half for training: 6 train images -> 3
    assert Counter(s.category for s in val) == {"grid": 3, "ring": 3}
    assert len(train) + len(val) == 2 * SMALL["train"]
    assert not {s.image_path for s in train} & {s.image_path for s in val}
    assert all("/train/good/" in s.image_path for s in val)  # never the test split
    again = _dm(root, validation="train_holdout", val_fraction=0.34, seed=3)
    again.setup("fit")
    assert [s.image_path for s in again.samples("val")] == [s.image_path for s in val]
    other = _dm(root, validation="train_holdout", val_fraction=0.34, seed=4)
    other.setup("fit")
    assert [s.image_path for s in other.samples("val")] != [s.image_path for s in val]
    batch = next(iter(dm.val_dataloader()))
    assert set(batch.label.tolist()) == {0}


def test_validation_split_missing_is_an_error(synth_root):
    from anomaly_bench.data import DataError

    with pytest.raises(DataError, match="no validation split"):
        _dm(synth_root("mvtec"), validation="validation").setup("fit")
    loco = MVTecLOCO(root=synth_root("loco"), image_size=32, num_workers=0, validation="none")
    loco.setup("fit")
    assert loco.val_dataloader() == []


def test_memory_cache_decodes_each_file_once(synth_root, monkeypatch):
    calls = Counter()
    real = dataset_module.decode_image

    def counting(path, size):
        calls[path] += 1
        return real(path, size)

    monkeypatch.setattr(dataset_module, "decode_image", counting)
    dm = _dm(synth_root("mvtec"), category="ring", batch_size=4)
    dm.setup("fit")
    first = torch.cat([b.image for b in dm.train_dataloader()])
    for _epoch in range(2):
        again = torch.cat([b.image for b in dm.train_dataloader()])
    assert len(calls) == SMALL["train"] and set(calls.values()) == {1}
    assert torch.allclose(first.sum(), again.sum())

    calls.clear()
    nocache = _dm(synth_root("mvtec"), category="ring", batch_size=4, cache="none")
    nocache.setup("fit")
    for _epoch in range(2):
        list(nocache.train_dataloader())
    assert set(calls.values()) == {2}


def test_disk_cache_survives_a_new_datamodule(synth_root, tmp_path, monkeypatch):
    dm = _dm(synth_root("mvtec"), category="ring", cache="disk", cache_dir=tmp_path)
    dm.setup("test")
    first = [b for b in dm.test_dataloader()]
    assert len(list(tmp_path.rglob("*.npz"))) == SMALL["test_good"] + 3 * SMALL["per_defect"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the disk cache holds the item")

    monkeypatch.setattr(dataset_module, "decode_image", no_decoding)
    dm2 = _dm(synth_root("mvtec"), category="ring", cache="disk", cache_dir=tmp_path)
    dm2.setup("test")
    second = [b for b in dm2.test_dataloader()]
    assert torch.equal(first[0].image, second[0].image) and torch.equal(first[0].mask, second[0].mask)
    assert first[0].orig_size.tolist() == second[0].orig_size.tolist()


def test_predict_path_folder_and_file(synth_root, tmp_path):
    root = synth_root("mvtec")
    folder = tmp_path / "incoming" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((40, 30, 3), 50 * i, np.uint8))
    dm = _dm(root, category="ring", predict_path=tmp_path / "incoming")
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert len(batch) == 3 and batch.label.tolist() == [-1, -1, -1]
    assert batch.orig_size.tolist()[0] == [40, 30] and batch.category == ["ring"] * 3
    # without a dataset root on disk (predict on another machine) a single file works too
    single = MVTecAD(root=tmp_path / "not_here", image_size=32, num_workers=0, predict_path=folder / "img1.png")
    single.setup("predict")
    assert len(next(iter(single.predict_dataloader()))) == 1
    # without predict_path, predict runs on the test split
    plain = _dm(root, category="ring")
    plain.setup("predict")
    assert len(plain.samples("predict")) == len(plain.samples("test"))


def test_folder_datamodule(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("good", "bad/scratch", "bad/dent", "gt/scratch", "gt/dent"):
        (tmp_path / sub).mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(tmp_path / "good" / f"{i:02d}.jpg"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    for defect in ("scratch", "dent"):
        for i in range(2):
            cv2.imwrite(str(tmp_path / "bad" / defect / f"{i}.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
            mask = np.zeros((48, 48), np.uint8)
            mask[10:20, 10:20] = 1  # 0/1 masks are fine (binarised with != 0)
            cv2.imwrite(str(tmp_path / "gt" / defect / f"{i}_mask.png"), mask)
    dm = Folder(root=tmp_path, normal_dir="good", abnormal_dir="bad", mask_dir="gt", name="widgets",
                image_size=24, num_workers=0, batch_size=64, normal_test_fraction=0.3)
    dm.setup("fit")
    dm.setup("test")
    assert dm.categories == ["widgets"]
    assert len(dm.samples("train")) == 7
    test = next(iter(dm.test_dataloader()))
    assert Counter(test.defect) == {"good": 3, "scratch": 2, "dent": 2}
    for mask, label in zip(test.mask, test.label):
        assert (mask.sum() > 0) == (label == 1)
        if label == 1:
            assert mask[5:10, 5:10].all() and mask[0:4].sum() == 0  # 10:20 of 48 -> 5:10 of 24


def test_lightning_fit_with_validation_off_and_on(synth_root, tmp_path):
    import lightning.pytorch as pl

    from anomaly_bench.types import AnomalyOutput

    seen = {}

    class Tiny(pl.LightningModule):
        input_normalization = "none"

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)

        def training_step(self, batch, batch_idx):
            seen["train_max"] = max(seen.get("train_max", 0.0), float(batch.image.max()))
            return self.conv(batch.image).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            seen["val"] = seen.get("val", 0) + len(batch)
            out = self.conv(batch.image)[:, 0]
            return AnomalyOutput(out, out.flatten(1).amax(1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    for validation, expected in (("none", None), ("train_holdout", 3)):
        seen.clear()
        dm = _dm(synth_root("mvtec"), category="ring", batch_size=4, validation=validation, val_fraction=0.34)
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             num_sanity_val_steps=0)
        trainer.fit(Tiny(), datamodule=dm)
        assert dm.resolved_normalization == "none" and seen["train_max"] <= 1.0
        assert seen.get("val") == expected


def test_base_class_is_abstract(tmp_path):
    with pytest.raises(NotImplementedError):
        AnomalyDataModule(root=tmp_path).setup("fit")
