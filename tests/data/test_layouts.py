"""Writer -> datamodule -> batches, for every layout: counts, labels, categories, aligned masks."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from anomaly_bench.data import GoodsAD, MPDD, MVTecAD, MVTecLOCO, VisA
from anomaly_bench.types import Batch

from .conftest import SMALL

N_DEFECTS = 3  # defect types per default category (4 for the LOCO scenes)
CASES = [(MVTecAD, "mvtec", {}), (MPDD, "mpdd", {}), (GoodsAD, "goodsad", {}),
         (VisA, "visa", {}), (VisA, "visa-raw", {})]


def _all_batches(loader) -> list[Batch]:
    return list(loader)


def _counts(batches: list[Batch]) -> Counter:
    return Counter((c, int(l)) for b in batches for c, l in zip(b.category, b.label))


@pytest.mark.parametrize("cls,layout,kwargs", CASES)
def test_counts_per_split_label_category(synth_root, cls, layout, kwargs):
    dm = cls(root=synth_root(layout), category="all", image_size=32, batch_size=4, num_workers=0, **kwargs)
    dm.setup("fit")
    dm.setup("test")
    cats = dm.categories
    assert len(cats) == 2
    train = _all_batches(dm.train_dataloader())
    assert _counts(train) == {(c, 0): SMALL["train"] for c in cats}
    test = _all_batches(dm.test_dataloader())
    expected = {**{(c, 0): SMALL["test_good"] for c in cats}, **{(c, 1): SMALL["per_defect"] * N_DEFECTS for c in cats}}
    assert _counts(test) == expected
    assert dm.val_dataloader() == []  # default: no validation (never the test split)
    b = test[0]
    assert b.image.shape == (4, 3, 32, 32) and b.mask.shape == (4, 32, 32) and b.image.dtype == torch.float32
    assert b.orig_size.tolist()[0] == [64, 64]
    for batch in test:
        for label, mask, paths in zip(batch.label, batch.mask, batch.mask_paths):
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            assert (mask.sum() > 0) == (int(label) == 1) == (len(paths) == 1)


def test_single_category_and_list(synth_root):
    root = synth_root("mvtec")
    one = MVTecAD(root=root, category="ring", image_size=32, num_workers=0)
    one.setup("test")
    assert one.categories == ["ring"] and {s.category for s in one.samples("test")} == {"ring"}
    both = MVTecAD(root=root, category=["ring", "grid"], image_size=32, num_workers=0)
    both.setup("test")
    assert both.categories == ["ring", "grid"]
    assert {s.category for s in both.samples("test")} == {"ring", "grid"}


def test_unified_all_mixes_categories_in_one_training_loader(synth_root):
    dm = MVTecAD(root=synth_root("mvtec"), category="all", image_size=32, batch_size=64, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert Counter(batch.category) == {"grid": SMALL["train"], "ring": SMALL["train"]}


@pytest.mark.parametrize("cls,layout", [(MVTecAD, "mvtec"), (MPDD, "mpdd"), (GoodsAD, "goodsad"), (VisA, "visa-raw")])
def test_masks_land_on_the_defects(synth_root, cls, layout):
    """Pixels under the mask deviate from the training images far more than pixels outside it.

    A flipped, shifted or mis-paired mask would put the mask on ordinary texture (ratio ~1).
    """
    ratios = []
    for category in cls(root=synth_root(layout), num_workers=0).categories:
        dm = cls(root=synth_root(layout), category=category, image_size=64, batch_size=64,
                 num_workers=0, normalization="none")
        dm.setup("fit")
        dm.setup("test")
        train = next(iter(dm.train_dataloader())).image
        test = next(iter(dm.test_dataloader()))
        deviation = ((test.image - train.mean(0)).abs() / (train.std(0) + 0.03)).sum(1)
        for dev, mask, label in zip(deviation, test.mask, test.label):
            if int(label) == 1:
                ratios.append(float(dev[mask > 0].mean() / dev[mask == 0].mean()))
    ratios = np.array(ratios)
    assert np.median(ratios) > 2.0 and (ratios > 1.2).mean() >= 0.75, ratios


def test_visa_raw_and_prepared_agree_and_raw_masks_keep_class_ids(synth_root):
    raw = VisA(root=synth_root("visa-raw"), image_size=32, num_workers=0)
    prepared = VisA(root=synth_root("visa"), image_size=32, num_workers=0)
    assert raw.resolved_layout == "raw" and prepared.resolved_layout == "prepared"
    raw.setup("test")
    prepared.setup("test")
    assert raw.categories == prepared.categories == ["board", "ring"]
    for split in ("train", "test"):
        raw.setup("fit")
        prepared.setup("fit")
        assert Counter((s.category, s.label) for s in raw.samples(split)) == \
            Counter((s.category, s.label) for s in prepared.samples(split))
    anomalous = [s for s in raw.samples("test") if s.label == 1]
    assert all(s.mask_paths[0].endswith(".png") and "/Data/Masks/Anomaly/" in s.mask_paths[0] for s in anomalous)
    values = set()
    for s in anomalous:
        values |= set(np.unique(cv2.imread(s.mask_paths[0], cv2.IMREAD_UNCHANGED)).tolist())
    assert values == {0, 1, 2, 3}  # class ids survive on disk for per-defect analysis
    batch = next(iter(raw.test_dataloader()))
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}  # the metric mask is != 0


def test_goodsad_reads_jpg_images_and_png_masks(synth_root):
    dm = GoodsAD(root=synth_root("goodsad"), image_size=32, num_workers=0)
    dm.setup("test")
    anomalous = [s for s in dm.samples("test") if s.label == 1]
    assert {s.defect for s in anomalous} == {"scratch", "stain", "contamination", "crack"}
    for s in anomalous:
        assert s.image_path.endswith(".jpg") and s.mask_paths[0].endswith(".png")
        assert s.mask_paths[0].split("/")[-1][:-4] == s.image_path.split("/")[-1][:-4]


def test_loco_channels_saturation_and_validation_split(synth_root):
    import json

    root = synth_root("loco")
    dm = MVTecLOCO(root=root, image_size=(32, 40), batch_size=64, num_workers=0)
    assert dm.validation is None and dm.resolved_validation == "validation"  # the dataset's own split
    dm.setup("fit")
    dm.setup("test")
    assert dm.categories == ["cables", "pins"]
    val = next(iter(dm.val_dataloader()))
    assert len(val) == 2 * SMALL["validation"] and set(val.label.tolist()) == {0}
    assert all("/validation/good/" in p for p in val.path)
    test = next(iter(dm.test_dataloader()))
    assert test.image.shape[-2:] == (32, 40)
    assert test.orig_size.tolist()[0] == [64, 80]
    assert Counter(test.defect) == {"good": 6, "logical_anomalies": 8, "structural_anomalies": 8}
    multi = 0
    for i in range(len(test)):
        paths, specs = test.mask_paths[i], test.defects[i]
        assert len(paths) == len(specs)
        if test.label[i] == 0:
            assert paths == () and float(test.mask[i].sum()) == 0
            continue
        multi += len(paths) > 1
        config = {e["pixel_value"]: e for e in json.loads((root / test.category[i] / "defects_config.json").read_text())}
        union = np.zeros((64, 80), bool)
        for path, spec in zip(paths, specs):
            channel = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            assert set(np.unique(channel)) == {0, spec.pixel_value}
            entry = config[spec.pixel_value]
            assert spec.name == entry["defect_name"]
            assert spec.saturation_threshold == entry["saturation_threshold"]
            assert spec.relative_saturation == entry["relative_saturation"]
            union |= channel != 0
        small = cv2.resize(union.astype(np.uint8), (40, 32), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(small, test.mask[i].numpy().astype(np.uint8))
        group = "logical" if test.defect[i] == "logical_anomalies" else "structural"
        assert all(s.relative_saturation == (group == "structural") for s in specs)
        assert test.subset[i] == group  # the evaluation subset comes from the data, not folder names
    assert multi >= 1  # some logical images have several regions (one file each)
    assert {test.subset[i] for i in range(len(test)) if test.label[i] == 0} == {""}
    assert {s.subset for s in dm.samples("train")} == {""}


def test_train_holdout_copies_samples_whole(synth_root):
    """Held-out normals are the indexed samples with only their split changed (every field kept)."""
    import dataclasses

    class Tagged(MVTecAD):  # every field set to a non-default value, subset included
        def index_category(self, category):
            return [dataclasses.replace(s, subset="structural", defect="odd") for s in super().index_category(category)]

    dm = Tagged(root=synth_root("mvtec"), category="ring", image_size=32, num_workers=0,
                validation="train_holdout", val_fraction=0.5)
    indexed = {s.image_path: s for s in dm.index_category("ring") if s.split == "train"}
    held = dm.samples("val")
    assert held and all(s == dataclasses.replace(indexed[s.image_path], split="val") for s in held)
    assert {s.subset for s in held} == {"structural"}
    assert {s.image_path for s in held}.isdisjoint(s.image_path for s in dm.samples("train"))
