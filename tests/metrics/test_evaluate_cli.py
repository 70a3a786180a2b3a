"""``anomaly-bench evaluate`` on a synthetic dataset in the real MVTec AD / LOCO layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from anomaly_bench.data.io import read_mask
from anomaly_bench.metrics.accumulator import EvalItem, EvaluationAccumulator, EvaluationConfig
from anomaly_bench.metrics.evaluate_cli import MapIndex, evaluate_main, load_map
from anomaly_bench.metrics.report import read_tables

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
                          "--output", str(tmp_path / "out"), "--no_plots"]) == 0
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
                          "--resolution", "32", "--no_plots"]) == 0
    row = _rows(tmp_path / "maps" / "metrics.csv")["pushpins"]
    assert float(row["image_auroc_logical"]) == 1.0 and float(row["image_auroc_structural"]) == 1.0
    assert float(row["pixel_auspro@0.05"]) > 0.5


def _one_line_error(capsys, argv) -> str:
    """Run the command expecting exit status 2; returns its single stderr line."""
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anomaly-bench evaluate: error: "), err
    return err[0]


def test_errors_are_one_line_naming_the_culprit(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANOMALY_BENCH_DEBUG", raising=False)
    data.write_dataset("mvtec", tmp_path / "ds", categories=["bottle"], size=32, train=2, test_good=2, per_defect=1)
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "unrelated.npy", np.zeros((4, 4)))
    base = ["--maps", str(tmp_path / "maps"), "--root", str(tmp_path / "ds")]
    line = _one_line_error(capsys, [*base, "--dataset", "MVTecAD"])
    assert "no map for test image" in line and "bottle/test/" in line
    assert "MVTecLOCO" in _one_line_error(capsys, [*base, "--dataset", "MVTecADD"])  # lists the known ones
    assert "'nope'" in _one_line_error(capsys, [*base, "--dataset", "MVTecAD", "--category", "nope"])
    missing = tmp_path / "nowhere"
    assert str(missing) in _one_line_error(capsys, ["--maps", str(missing), "--dataset", "MVTecAD", "--root", "x"])
    assert "--fpr_limit" in _one_line_error(capsys, [*base, "--dataset", "MVTecAD", "--fpr_limit", "abc"])
    assert evaluate_main(["--help"]) == 0 and "--fpr_limit" in capsys.readouterr().out
    monkeypatch.setenv("ANOMALY_BENCH_DEBUG", "1")  # the traceback for a developer
    with pytest.raises(ValueError, match="no map for test image"):
        evaluate_main([*base, "--dataset", "MVTecAD"])


def test_dashed_flags_of_release_01_still_work_with_a_note(tmp_path, capsys):
    data.write_dataset("mvtec", tmp_path / "ds", categories=["bottle"], size=32, train=2, test_good=2, per_defect=2)
    _oracle_maps(data.MVTecAD, tmp_path / "ds", tmp_path / "maps")
    assert evaluate_main(["--maps", str(tmp_path / "maps"), "--dataset", "MVTecAD", "--root", str(tmp_path / "ds"),
                          "--fpr-limit=0.1", "--spro-limits", "0.2", "--exact-max-pixels", "10",
                          "--no-plots"]) == 0
    err = capsys.readouterr().err
    for old, new in (("--fpr-limit", "--fpr_limit"), ("--spro-limits", "--spro_limits"),
                     ("--exact-max-pixels", "--exact_max_pixels"), ("--no-plots", "--no_plots")):
        assert f"anomaly-bench evaluate: deprecated: {old} is deprecated, use {new}" in err
    info = json.loads((tmp_path / "maps" / "metrics.json").read_text())
    assert info["fpr_limit"] == 0.1 and info["spro_limits"] == [0.2] and info["modes_used"]["bottle"] == "binned"
    assert not list((tmp_path / "maps" / "curves").glob("*.png"))  # only the curve points (data) are written


def test_rgb_photo_saved_as_a_mask_is_refused_in_one_line(tmp_path, capsys):
    data.write_dataset("mvtec", tmp_path / "ds", categories=["bottle"], size=32, train=2, test_good=2, per_defect=1)
    _oracle_maps(data.MVTecAD, tmp_path / "ds", tmp_path / "maps")
    mask = sorted((tmp_path / "ds" / "bottle" / "ground_truth").rglob("*.png"))[0]
    photo = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(mask), photo)
    line = _one_line_error(capsys, ["--maps", str(tmp_path / "maps"), "--dataset", "MVTecAD",
                                    "--root", str(tmp_path / "ds"), "--no_plots"])
    assert str(mask) in line and "colour" in line and "single-channel" in line


def test_evaluate_and_the_evaluator_core_agree_on_loco(tmp_path):
    """The CLI (items from the index) and a run (items from collated batches) give the same rows."""
    data.write_dataset("loco", tmp_path / "ds", categories=["pushpins"], size=32, train=2, test_good=3, per_defect=3)
    _oracle_maps(data.MVTecLOCO, tmp_path / "ds", tmp_path / "maps")
    for path in sorted((tmp_path / "maps").rglob("*.npy"))[::3]:  # imperfect maps: numbers below 1
        np.save(path, np.roll(np.load(path), 3, axis=1))
    assert evaluate_main(["--maps", str(tmp_path / "maps"), "--dataset", "MVTecLOCO", "--root", str(tmp_path / "ds"),
                          "--no_plots"]) == 0
    cli_rows, _ = read_tables(tmp_path / "maps")

    datamodule = data.MVTecLOCO(root=tmp_path / "ds", category="all", num_workers=0, cache="none", image_size=16,
                                batch_size=4)
    datamodule.setup("test")
    index = MapIndex(tmp_path / "maps")
    accumulator = EvaluationAccumulator(EvaluationConfig())
    samples = {s.image_path: s for s in datamodule.samples("test")}
    for batch in datamodule.test_dataloader():
        assert set(batch.subset) <= {"", "logical", "structural"}
        maps = [load_map(index.find(samples[path])) for path in batch.path]
        scores = torch.stack([m.max() for m in maps])
        accumulator.update(scores, maps, EvalItem.from_batch(batch))
    run_rows = accumulator.finish().rows
    assert run_rows == cli_rows
    assert 0.5 < cli_rows[0]["pixel_auspro@0.05"] < 1.0 and cli_rows[0]["image_auroc_logical"] is not None
