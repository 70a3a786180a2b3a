"""``anomaly-bench export`` end to end: fit a tiny PatchCore, export it with ``--ckpt_path last``, score
files with ``predict --export`` (the standalone inferencer), and the command's one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_bench.cli import ConfigError, main
from anomaly_bench.deploy.export import sha256_of
from anomaly_bench.deploy.inferencer import Inferencer
from anomaly_bench.deploy.metadata import read_metadata
from anomaly_bench.export_cli import parse_formats, predict_export_main
from anomaly_bench.runs import RunDirError
from tests.deploy.conftest import PatchCoreRun


def test_export_writes_each_format_into_the_run(patchcore_run: PatchCoreRun) -> None:
    checkpoint = patchcore_run.run_dir / "checkpoints" / "last.ckpt"
    for fmt in ("onnx", "openvino"):
        data = read_metadata(patchcore_run.run_dir / "export" / fmt)
        assert data["format"] == fmt and data["method"] == "anomaly_bench.models.patchcore.lightning_model.PatchCore"
        assert data["checkpoint"] == {"path": str(checkpoint.resolve()), "sha256": sha256_of(checkpoint)}
        assert data["input"]["size"] == [32, 32] and data["normalization"]["name"] == "imagenet"
        assert data["data"] == {"class_path": "anomaly_bench.data.MVTecAD", "category": "all", "image_size": [32, 32]}
        assert data["categories"] == ["bottle", "carpet"]
        # the thresholds the fit's Thresholding callback stored in the checkpoint
        assert set(data["thresholds"]) == {"all", "bottle", "carpet"}
        assert data["thresholds"]["bottle"] == patchcore_run.case.thresholds["bottle"]


def test_predict_with_the_export_writes_scores_and_masks(patchcore_run: PatchCoreRun, synth_mvtec: Path,
                                                         tmp_path: Path, capsys) -> None:
    export = patchcore_run.run_dir / "export" / "onnx"
    folder = synth_mvtec / "bottle" / "test"
    single = tmp_path / "extra.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(single)
    assert predict_export_main(["--export", str(export), str(folder), "--data.init_args.predict_path", str(single),
                                "--category", "bottle"]) == 0
    out = export / "predictions"
    assert f"scores:        {out / 'predictions.csv'}" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    images = sorted(p for p in folder.rglob("*.png"))
    assert [r["path"] for r in rows] == [str(p) for p in images] + [str(single)]
    inferencer = Inferencer(export)
    threshold = patchcore_run.case.thresholds["bottle"]
    for row, image in zip(rows, [*images, single]):
        result = inferencer.predict(image, "bottle")
        assert float(row["pred_score"]) == pytest.approx(result.score, rel=1e-6)
        assert int(row["pred_label"]) == int(result.score >= threshold["image"])
        assert float(row["image_threshold"]) == threshold["image"] and row["category"] == "bottle"
        mask = np.asarray(Image.open(out / row["mask_file"]))
        assert mask.shape == result.anomaly_map.shape and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, result.mask)
    # anomalous test images score higher than the good ones on average (the export is the trained model)
    scores = {r["path"]: float(r["pred_score"]) for r in rows}
    good = [s for p, s in scores.items() if "/good/" in p]
    bad = [s for p, s in scores.items() if "/test/" in p and "/good/" not in p]
    assert np.mean(bad) > np.mean(good)


def test_predict_export_is_routed_by_the_main_cli(patchcore_run: PatchCoreRun, synth_mvtec: Path, tmp_path: Path,
                                                 capsys) -> None:
    from anomaly_bench.cli import main

    export = patchcore_run.run_dir / "export" / "onnx"
    folder = synth_mvtec / "bottle" / "test" / "good"
    assert main(["predict", "--export", str(export), str(folder), "--category", "bottle", "--output",
                 str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == len(list(folder.glob("*.png"))) and all(r["pred_label"] in ("0", "1") for r in rows)


def test_export_errors_are_one_line(patchcore_run: PatchCoreRun, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="needs a trained model: add --ckpt_path last"):
        main(["export", *patchcore_run.args, "--format", "onnx"])
    with pytest.raises(ConfigError, match="--format 'tflite'"):
        main(["export", *patchcore_run.args, "--ckpt_path", "last", "--format", "tflite"])
    elsewhere = [*patchcore_run.args, "--trainer.default_root_dir", str(tmp_path)]  # the last value wins
    with pytest.raises(RunDirError, match="no run with a checkpoint"):
        main(["export", *elsewhere, "--ckpt_path", "last"])
    with pytest.raises(ConfigError, match="give image files or folders"):
        predict_export_main(["--export", str(patchcore_run.run_dir / "export" / "onnx")])
    with pytest.raises(ConfigError, match="metadata.json not found"):
        predict_export_main(["--export", str(tmp_path), str(tmp_path)])
    assert parse_formats("ONNX, openvino,onnx") == ["onnx", "openvino"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_predict_with_the_export_equals_the_lightning_predict(patchcore_run: PatchCoreRun, synth_mvtec: Path,
                                                              tmp_path: Path, fmt: str) -> None:
    folder = synth_mvtec / "carpet" / "test"
    main(["predict", *patchcore_run.args, "--ckpt_path", "last", "--data.init_args.predict_path", str(folder)])
    lightning = {r["path"]: r for r in csv.DictReader((patchcore_run.run_dir / "predictions.csv").open())}
    predict_export_main(["--export", str(patchcore_run.run_dir / "export" / fmt), str(folder),
                         "--output", str(tmp_path)])
    exported = {r["path"]: r for r in csv.DictReader((tmp_path / "predictions.csv").open())}
    assert sorted(exported) == sorted(lightning) and len(exported) > 5
    for path, row in exported.items():
        assert float(row["pred_score"]) == pytest.approx(float(lightning[path]["pred_score"]), rel=1e-5, abs=1e-6)
        assert row["pred_label"] == lightning[path]["pred_label"]  # both use the "all" thresholds
        assert float(row["map_max"]) == pytest.approx(float(lightning[path]["map_max"]), rel=1e-5, abs=1e-6)
