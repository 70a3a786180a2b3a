"""The synthetic writer: real folder/file naming, determinism, exact masks, no global shortcut."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_bench.data.synthetic import LAYOUTS, synth_main, write_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_dataset("mvtec", tmp_path / "a", size=48, train=3, test_good=2, per_defect=1)
    write_dataset("mvtec", tmp_path / "b", size=48, train=3, test_good=2, per_defect=1)
    write_dataset("mvtec", tmp_path / "c", size=48, train=3, test_good=2, per_defect=1, seed=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a.categories == ["grid", "ring"]


def test_mvtec_naming(synth_root):
    root = synth_root("mvtec")
    assert sorted(p.name for p in root.iterdir()) == ["grid", "ring"]
    cat = root / "ring"
    assert sorted(p.name for p in (cat / "train" / "good").iterdir())[:2] == ["000.png", "001.png"]
    for defect_dir in (cat / "test").iterdir():
        for image in defect_dir.iterdir():
            mask = cat / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
            assert mask.is_file() == (defect_dir.name != "good")
    mask = cv2.imread(str(next((cat / "ground_truth").rglob("*_mask.png"))), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) == {0, 255}
    # MVTec's grid is grayscale: our grid category too (exercises gray -> RGB conversion)
    gray = cv2.imread(str(root / "grid" / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2


def test_goodsad_naming(synth_root):
    cat = synth_root("goodsad") / "ring"
    images = list((cat / "test").rglob("*.*"))
    assert images and all(p.suffix == ".jpg" and len(p.stem) == 6 and p.stem.isdigit() for p in images)
    masks = list((cat / "ground_truth").rglob("*"))
    masks = [m for m in masks if m.is_file()]
    assert masks and all(m.suffix == ".png" for m in masks)
    for m in masks:  # same stem, no _mask suffix
        assert (cat / "test" / m.parent.name / f"{m.stem}.jpg").is_file()


def test_visa_raw_naming_and_csv(synth_root):
    root = synth_root("visa-raw")
    with open(root / "split_csv" / "1cls.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["object", "split", "label", "image", "mask"]
        rows = list(reader)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert {r["label"] for r in rows} == {"normal", "anomaly"}
    for r in rows:
        assert (root / r["image"]).is_file()
        if r["label"] == "normal":
            assert r["mask"] == "" and "/Data/Images/Normal/" in r["image"] and len(Path(r["image"]).stem) == 4
        else:
            assert "/Data/Images/Anomaly/" in r["image"] and len(Path(r["image"]).stem) == 3
            assert r["image"].endswith(".JPG") and r["mask"].endswith(".png")
            ids = cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED)
            assert ids.ndim == 2 and 1 <= ids.max() <= 3  # raw class ids, not 255
    assert (root / "board" / "image_anno.csv").is_file()


def test_visa_prepared_naming(synth_root):
    cat = synth_root("visa") / "board"
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["bad", "good"]
    for image in (cat / "test" / "bad").iterdir():
        assert image.suffix == ".JPG"
        mask = cv2.imread(str(cat / "ground_truth" / "bad" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 3 and set(np.unique(mask)) <= {0, 255}


def test_loco_naming_config_and_channels(synth_root):
    cat = synth_root("loco") / "pins"
    config = json.loads((cat / "defects_config.json").read_text())
    assert {tuple(sorted(e)) for e in config} == {("defect_name", "pixel_value", "relative_saturation", "saturation_threshold")}
    by_value = {e["pixel_value"]: e for e in config}
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["good", "logical_anomalies", "structural_anomalies"]
    assert (cat / "validation" / "good").is_dir()
    for group in ("logical_anomalies", "structural_anomalies"):
        for image in (cat / "test" / group).iterdir():
            region_dir = cat / "ground_truth" / group / image.stem
            files = sorted(region_dir.iterdir())
            assert files and files[0].name == "000.png"
            for f in files:
                channel = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                values = set(np.unique(channel)) - {0}
                assert len(values) == 1 and values.pop() in by_value
    img = cv2.imread(str(cat / "train" / "good" / "000.png"))
    assert img.shape[:2] == (64, 80)  # non-square like the real LOCO images
    logical = [e for e in config if not e["relative_saturation"]]
    assert logical and all(e["saturation_threshold"] >= 1 for e in logical)


def _global_stats(root: Path, pattern_good: str, pattern_bad: str):
    good = [cv2.imread(str(p))[..., ::-1].astype(np.float64) for p in sorted(root.glob(pattern_good))]
    bad = [cv2.imread(str(p))[..., ::-1].astype(np.float64) for p in sorted(root.glob(pattern_bad))]
    return good, bad


@pytest.mark.parametrize("layout,category", [("mvtec", "ring"), ("mvtec", "grid"), ("mpdd", "board"),
                                             ("loco", "pins"), ("goodsad", "weave"), ("mpdd", "wood")])
def test_global_colour_statistics_do_not_separate_normal_from_anomalous(tmp_path, layout, category):
    write_dataset(layout, tmp_path, categories=[category], size=48, train=1, test_good=36, per_defect=12, validation=0)
    anomalous = "test/*_anomalies/*.png" if layout == "loco" else "test/[!g]*/*.*"
    good, bad = _global_stats(tmp_path / category, "test/good/*.*", anomalous)
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    images = good + bad
    features = {
        "gray_mean": [im.mean() for im in images],
        "gray_std": [im.mean(2).std() for im in images],
        **{f"mean_{c}": [im[..., i].mean() for im in images] for i, c in enumerate("rgb")},
        **{f"std_{c}": [im[..., i].std() for im in images] for i, c in enumerate("rgb")},
    }
    for name, values in features.items():
        auroc = roc_auc_score(labels, values)
        assert abs(auroc - 0.5) <= 0.15, f"{name} separates normal from anomalous: AUROC {auroc:.3f}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_writes_masks_of_reasonable_area(synth_root, layout):
    root = synth_root(layout)
    masks = [p for p in root.rglob("*.png") if "ground_truth" in p.parts or "Masks" in p.parts]
    assert masks
    for m in masks:
        arr = cv2.imread(str(m), cv2.IMREAD_UNCHANGED)
        frac = (arr != 0).mean()
        assert 0.001 < frac < 0.25, f"{m}: defect covers {frac:.2%} of the image"


def test_synth_main_cli(tmp_path, capsys):
    code = synth_main(["--layout", "goodsad", "--root", str(tmp_path), "--categories", "weave",
                       "--size", "40", "--train", "2", "--test-good", "1", "--per-defect", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert str(tmp_path) in out and "train/good 2" in out and "test/good 1" in out
    assert len(list((tmp_path / "weave" / "train" / "good").iterdir())) == 2
    with pytest.raises(SystemExit):
        synth_main(["--layout", "nope", "--root", str(tmp_path)])
