"""``anomaly-bench evaluate`` on a synthetic dataset in the real MVTec AD / LOCO layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from anomaly_bench.data.io import read_mask
from anomaly_bench.metrics.evaluate_cli import evaluate_main

data = pytest.importorskip("anomaly_bench.data")


def _oracle_maps(datamodule_cls, root: Path, out: Path, invert_category: str | None = None) -> int:
    """Save each test image's ground truth as its map (mvtec: <cat>/test/<defect>/<stem>.npy)."""
    count = 0
    for sample in datamodule_cls(root=root, category="all", num_workers=0, cache="none").samples("test"):
        image = Path(sample.image_path)
        if sample.mask_paths:
            union = np.logical_or.reduce([read_mask(p) != 0 for p in sample.mask_paths]).astype(np.float32)
        else:
            from anomaly_bench.data.io import image_size_on_disk

            union = np.zeros(image_size_on_disk(image), np.float32)
        if sample.category == invert_category:
            union = -union
        target = out / sample.category / "test" / image.parent.name / f"{image.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, union[::2, ::2] * 10 - 3 if count % 2 else union * 10 - 3)  # half at half size
        count += 1
    return count


def _rows(path: Path) -> dict[str, dict]:
    with open(path) as handle:
        return {r["category"]: r for r in csv.DictReader(handle)}


def test_evaluate_mvtec_layout_oracle_and_inverted(tmp_path):
    data.write_dataset("mvtec", tmp_path / "ds", categories=["bottle", "cable"], size=32, train=2, test_good=2, per_defect=2)
    assert _oracle_maps(data.MVTecAD, tmp_path / "ds", tmp_path / "maps", invert_category="cable") > 4
    assert evaluate_main(["--maps", str(tmp_path / "maps"), "--dataset", "MVTecAD", "--root", str(tmp_path / "ds"),
                          "--output", str(tmp_path / "out"), "--no-plots"]) == 0
    rows = _rows(tmp_path / "out" / "metrics.csv")
    assert list(rows) == ["bottle", "cable", "mean"]
    assert float(rows["bottle"]["image_auroc"]) == 1.0
    assert float(rows["cable"]["image_auroc"]) == 0.5  # inverted maps all have max -3 (background): ties
    # half the maps were saved at half size and upsampled: the oracle stays near-perfect, not exact
    assert float(rows["bottle"]["pixel_aupro"]) > 0.9 and float(rows["cable"]["pixel_auroc"]) < 0.1
    info = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert info["resolution"] == "native" and info["image_score"] == "max of the anomaly map"


def test_evaluate_loco_layout_reports_spro(tmp_path):
    data.write_dataset("loco", tmp_path / "ds", categories=["pushpins"], size=32, train=2, test_good=2, per_defect=2)
    _oracle_maps(data.MVTecLOCO, tmp_path / "ds", tmp_path / "maps")
    assert evaluate_main(["--maps", str(tmp_path / "maps"), "--dataset", "MVTecLOCO", "--root", str(tmp_path / "ds"),
                          "--resolution", "32", "--no-plots"]) == 0
    row = _rows(tmp_path / "maps" / "metrics.csv")["pushpins"]
    assert float(row["image_auroc_logical"]) == 1.0 and float(row["image_auroc_structural"]) == 1.0
    assert float(row["pixel_auspro@0.05"]) > 0.5


def test_missing_map_is_named(tmp_path):
    data.write_dataset("mvtec", tmp_path / "ds", categories=["bottle"], size=32, train=2, test_good=2, per_defect=1)
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "unrelated.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="no map for test image"):
        evaluate_main(["--maps", str(tmp_path / "maps"), "--dataset", "MVTecAD", "--root", str(tmp_path / "ds")])
