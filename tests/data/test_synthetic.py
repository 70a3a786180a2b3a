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
from anomaly_bench.data.synthetic.writer import SYNTHETIC_MARKER


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
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["grid", "ring"]
    assert (root / SYNTHETIC_MARKER).is_file()
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


# ------------------------------------------------------------------ the held-out scene family
HELDOUT = ("fabric", "granite", "washer", "pcb")


def test_heldout_family_naming_counts_and_determinism(tmp_path):
    kwargs = dict(size=64, train=2, test_good=2, per_defect=2, family="heldout")
    summary = write_dataset("mvtec", tmp_path / "a", **kwargs)
    write_dataset("mvtec", tmp_path / "b", **kwargs)
    assert summary.categories == list(HELDOUT)
    # the marker that tells reports and grids "a stand-in, no paper comparison"
    from anomaly_bench.report.grid_info import root_is_synthetic

    marker = json.loads((tmp_path / "a" / SYNTHETIC_MARKER).read_text())
    assert marker["family"] == "heldout" and marker["layout"] == "mvtec" and marker["counts"] == summary.counts
    assert root_is_synthetic(str(tmp_path / "a")) and not root_is_synthetic(str(tmp_path))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    expected = {"fabric": {"thin_scratch", "scratch"}, "granite": {"thin_scratch", "scratch"},
                "washer": {"missing_hole", "dent"}, "pcb": {"shifted_part", "rotated_part"}}
    for category, defects in expected.items():
        counts = summary.counts[category]
        assert counts["train/good"] == 2 and counts["test/good"] == 2
        assert {k.split("/")[1] for k in counts if k.startswith("test/") and k != "test/good"} == defects
        assert all(counts[f"test/{d}"] == 2 for d in defects)
        for image in (tmp_path / "a" / category / "test").rglob("*.png"):
            mask = tmp_path / "a" / category / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
            assert mask.is_file() == (image.parent.name != "good")
    # the standard family is untouched by the new argument
    write_dataset("mvtec", tmp_path / "c", size=64, train=2, test_good=2, per_defect=2)
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == ["grid", "ring"]


@pytest.mark.parametrize("category", HELDOUT)
def test_heldout_masks_are_exactly_the_changed_pixels(category):
    """Draw the same layout twice, once with the defect: the pixels that differ are inside the
    mask, and most mask pixels differ (a moved part may overlap where it was)."""
    from anomaly_bench.data.synthetic import heldout

    kind = heldout.KINDS[category](category, 3)
    for k, defect in enumerate(heldout.DEFECTS_OF_KIND[category] * 3):
        layout = kind.sample_layout(np.random.default_rng(k), (128, 128))
        clean = kind.draw(layout, np.random.default_rng(100 + k))
        image, channels = kind.make_defect(defect, layout, np.random.default_rng(100 + k))
        assert [name for name, _ in channels] == [defect]
        mask = channels[0][1]
        changed = np.abs(image - clean).max(axis=2) > 1e-3
        assert mask.dtype == bool and mask.any()
        assert not (changed & ~mask).any(), f"{category}/{defect}: pixels changed outside the mask"
        # a turned or moved part covers part of its old footprint with the same body colour
        least = 0.4 if defect.endswith("_part") else 0.6
        assert changed[mask].mean() > least, f"{category}/{defect}: most of the mask is unchanged"
        if defect in ("thin_scratch", "scratch"):  # 1-2 px wide: no 3x3 block is fully inside the mask
            width = {"thin_scratch": 1, "scratch": 2}[defect]
            core = cv2.erode(mask.astype(np.uint8), np.ones((width + 1, width + 1), np.uint8))
            assert core.sum() <= 0.1 * mask.sum()
            assert mask.sum() >= 0.18 * 128 * width


def test_heldout_global_colour_statistics_do_not_separate_normal_from_anomalous(tmp_path):
    write_dataset("mvtec", tmp_path, size=64, train=1, test_good=24, per_defect=12, family="heldout")
    for category in HELDOUT:
        good, bad = _global_stats(tmp_path / category, "test/good/*.png", "test/[!g]*/*.png")
        labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
        images = good + bad
        for name, values in {"gray_mean": [im.mean() for im in images], "gray_std": [im.mean(2).std() for im in images],
                             **{f"mean_{c}": [im[..., i].mean() for im in images] for i, c in enumerate("rgb")}}.items():
            auroc = roc_auc_score(labels, values)
            assert abs(auroc - 0.5) <= 0.2, f"{category}: {name} separates normal from anomalous: AUROC {auroc:.3f}"


def test_heldout_family_in_other_layouts_and_through_the_cli(tmp_path, capsys):
    code = synth_main(["--layout", "goodsad", "--family", "heldout", "--root", str(tmp_path / "g"),
                       "--categories", "washer", "pcb", "--size", "48", "--train", "2", "--test-good", "1",
                       "--per-defect", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "washer" in out and "test/missing_hole 1" in out and "test/shifted_part 1" in out
    assert sorted(p.name for p in (tmp_path / "g").iterdir() if p.is_dir()) == ["pcb", "washer"]
    assert all(p.suffix == ".jpg" for p in (tmp_path / "g" / "pcb" / "test").rglob("*.*"))
    write_dataset("loco", tmp_path / "l", size=48, train=1, test_good=1, per_defect=1, family="heldout",
                  categories=["fabric"])
    assert (tmp_path / "l" / "fabric" / "test" / "structural_anomalies").is_dir()
    with pytest.raises(ValueError, match="family must be one of"):
        write_dataset("mvtec", tmp_path / "x", family="nope")
    with pytest.raises(SystemExit):
        synth_main(["--layout", "mvtec", "--family", "nope", "--root", str(tmp_path / "y")])
