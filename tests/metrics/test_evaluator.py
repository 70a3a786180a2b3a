"""The Evaluator inside a real (tiny) Lightning Trainer: files, columns, logging, resolutions."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from anomaly_bench.data.io import read_mask
from anomaly_bench.metrics import Evaluator
from anomaly_bench.metrics.accumulator import NonFiniteScoresError
from anomaly_bench.metrics.thresholds import fixed_thresholds
from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.types import AnomalyOutput, Batch, DefectSpec, collate_items

NATIVE = (20, 24)
MODEL = 16


def _write(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)
    return str(path)


def _items(root, good_only=False):
    """Category a (MVTec-like) and b (LOCO-like: logical with two mask files, structural)."""
    items = []
    rng = np.random.default_rng(0)

    def item(category, defect, label, mask_paths=(), defects=(), subset=""):
        union = np.zeros(NATIVE, np.uint8)
        for p in mask_paths:
            union |= (read_mask(p) != 0).astype(np.uint8)
        small = cv2.resize(union, (MODEL, MODEL), interpolation=cv2.INTER_NEAREST)
        items.append({
            "image": torch.from_numpy(rng.normal(size=(3, MODEL, MODEL)).astype(np.float32)),
            "label": label, "mask": torch.from_numpy(small.astype(np.float32)), "orig_size": NATIVE,
            "category": category, "defect": defect, "subset": subset,
            "path": f"{root}/{category}/test/{defect}/{len(items):03d}.png",
            "mask_paths": tuple(mask_paths), "defects": tuple(defects),
        })

    for category in ("a", "b"):
        item(category, "good", 0)
        item(category, "good", 0)
    if good_only:
        return items
    for n, (y, x) in enumerate([(2, 3), (10, 12)]):
        mask = np.zeros(NATIVE, np.uint8)
        mask[y : y + 5, x : x + 6] = 255
        item("a", "broken", 1, [_write(root / f"a/ground_truth/broken/{n:03d}_mask.png", mask)])
    first, second = np.zeros(NATIVE, np.uint8), np.zeros(NATIVE, np.uint8)
    first[1:4, 1:8], first[15:18, 18:22] = 255, 255  # one file, two blobs
    second[8:12, 8:12] = 254
    item("b", "logical_anomalies", 1,
         [_write(root / "b/ground_truth/logical_anomalies/000/000.png", first),
          _write(root / "b/ground_truth/logical_anomalies/000/001.png", second)],
         [DefectSpec(255, 0.5, True, "extra"), DefectSpec(254, 10, False, "missing")], subset="logical")
    third = np.zeros(NATIVE, np.uint8)
    third[5:9, 2:20] = 255
    item("b", "structural_anomalies", 1, [_write(root / "b/ground_truth/structural_anomalies/000/000.png", third)],
         [DefectSpec(255, 1.0, True, "scratch")], subset="structural")
    return items


class OracleModel(AnomalyModule):
    """Returns the ground truth as the anomaly map (raw scores 5 / -2: never inside [0, 1])."""

    def __init__(self, evaluator, at_native: bool = True) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.at_native = at_native
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def configure_callbacks(self):
        return [self.evaluator]  # this file checks the Evaluator alone, writing into default_root_dir

    def score_batch(self, batch: Batch) -> AnomalyOutput:
        if self.at_native:
            maps = []
            for paths in batch.mask_paths:
                union = np.zeros(NATIVE, bool)
                for p in paths:
                    union |= read_mask(p) != 0
                maps.append(torch.from_numpy(union.astype(np.float32)))
            maps = torch.stack(maps)
        else:
            maps = batch.mask.clone()
        maps = maps * 7.0 - 2.0
        return AnomalyOutput(maps, maps.flatten(1).amax(1))


def _loader(items):
    return DataLoader(items, batch_size=3, collate_fn=collate_items)


def _trainer(tmp_path, **kwargs):
    kwargs.setdefault("devices", 1)
    return Trainer(default_root_dir=str(tmp_path / "run"), accelerator="cpu", enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, **kwargs)


def _read_csv(path):
    with open(path) as handle:
        return {row["category"]: row for row in csv.DictReader(handle)}


def test_oracle_run_writes_per_category_and_mean_rows(tmp_path):
    evaluator = Evaluator()
    trainer = _trainer(tmp_path, logger=CSVLogger(str(tmp_path / "logs"), name="", version=""))
    results = trainer.test(OracleModel(evaluator), dataloaders=_loader(_items(tmp_path / "data")))
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    assert list(rows) == ["a", "b", "mean"]
    for category in rows:
        for column in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1max_oracle"):
            assert float(rows[category][column]) == pytest.approx(1.0), (category, column)
    for column in ("image_auroc_logical", "image_auroc_structural", "pixel_auspro_logical@0.05",
                   "pixel_auspro_structural@0.3", "pixel_auspro@0.05"):
        assert float(rows["b"][column]) == pytest.approx(1.0), column
        assert rows["a"][column] == "" and rows["mean"][column] == ""  # not defined for a
    assert rows["mean"]["num_images"] == "8"
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["resolution"] == "native" and info["fpr_limit"] == 0.3 and info["connectivity"] == 8
    assert info["metric_version"] and info["modes_used"] == {"a": "exact", "b": "exact"}
    assert (tmp_path / "run" / "curves" / "a.png").is_file() and (tmp_path / "run" / "curves" / "b.png").is_file()
    assert results[0]["test/image_auroc"] == pytest.approx(1.0)
    assert [r["category"] for r in evaluator.results] == ["a", "b", "mean"]
    logged = (tmp_path / "logs" / "metrics.csv").read_text()
    assert "test/a/pixel_aupro" in logged and "test/b/pixel_auspro_logical@0.05" in logged


def test_explicit_resolution_uses_batch_mask_and_is_recorded(tmp_path):
    evaluator = Evaluator(resolution=MODEL, plot_curves=False, mode="binned")
    _trainer(tmp_path, logger=False).test(OracleModel(evaluator, at_native=False),
                                          dataloaders=_loader(_items(tmp_path / "data")))
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    assert float(rows["a"]["pixel_aupro"]) == pytest.approx(1.0)
    assert float(rows["mean"]["pixel_auroc"]) == pytest.approx(1.0)
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["resolution"] == [MODEL, MODEL] and info["modes_used"]["a"] == "binned"


def test_validation_with_one_class_logs_nothing_and_does_not_fail(tmp_path):
    model = OracleModel(Evaluator(plot_curves=False), at_native=False)
    trainer = _trainer(tmp_path, logger=False)
    out = trainer.validate(model, dataloaders=_loader(_items(tmp_path / "data", good_only=True)))
    assert "val/image_auroc" not in out[0]
    out = trainer.validate(model, dataloaders=_loader(_items(tmp_path / "data")))
    assert out[0]["val/image_auroc"] == pytest.approx(1.0)


def test_wrong_step_output_is_a_clear_error(tmp_path):
    class Broken(OracleModel):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            return {"anomaly_map": batch.mask}

    with pytest.raises(TypeError, match="AnomalyOutput"):
        _trainer(tmp_path, logger=False).test(Broken(Evaluator()), dataloaders=_loader(_items(tmp_path / "data")))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="resolution"):
        Evaluator(resolution="huge")
    with pytest.raises(ValueError, match="mode"):
        Evaluator(mode="fast")


@pytest.mark.slow
def test_ddp_two_processes_write_the_numbers_of_one(tmp_path):
    """Two CPU processes (gloo): states gathered before rank 0 computes; sampler padding deduplicated."""
    items = _items(tmp_path / "data")
    items.append({**items[0], "path": items[0]["path"].replace("000.png", "extra.png")})  # 9: sampler pads to 10
    for item in items[::3]:  # imperfect maps so the numbers are not all 1
        item["mask"] = torch.roll(item["mask"], 3, dims=1)
    one = Evaluator(plot_curves=False, mode="binned")
    _trainer(tmp_path / "one", logger=False).test(OracleModel(one, at_native=False), dataloaders=_loader(items))
    trainer = _trainer(tmp_path / "two", logger=False, strategy="ddp_spawn", devices=2)
    trainer.test(OracleModel(Evaluator(plot_curves=False, mode="binned"), at_native=False), dataloaders=_loader(items))
    ddp_rows = _read_csv(tmp_path / "two" / "run" / "metrics.csv")
    one_rows = _read_csv(tmp_path / "one" / "run" / "metrics.csv")
    assert ddp_rows == one_rows
    assert float(one_rows["mean"]["pixel_aupro"]) < 0.999 and one_rows["mean"]["num_images"] == "9"


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_module_thresholds_add_precision_recall_f1_at_them(tmp_path, mode):
    """Known answers: at threshold -2 every image and pixel is flagged (oracle maps are 5 / -2)."""
    evaluator = Evaluator(plot_curves=False, mode=mode)
    model = OracleModel(evaluator)
    model.thresholds = fixed_thresholds(image=-2.0, pixel=-2.0, source="test")
    _trainer(tmp_path, logger=False).test(model, dataloaders=_loader(_items(tmp_path / "data")))
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    pixels = 4 * NATIVE[0] * NATIVE[1]  # 2 good + 2 anomalous images per category
    positives = {"a": 2 * 5 * 6, "b": (3 * 7 + 3 * 4) + 4 * 4 + 4 * 18}
    for category in ("a", "b"):
        row = rows[category]
        assert float(row["image_precision"]) == pytest.approx(0.5) and float(row["image_recall"]) == 1.0
        assert float(row["image_f1"]) == pytest.approx(2 / 3)
        assert float(row["pixel_precision"]) == pytest.approx(positives[category] / pixels)
        assert float(row["pixel_recall"]) == 1.0
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["thresholds"]["image"] == -2.0 and info["thresholds"]["pixel"] == -2.0
    assert info["thresholds"]["source"] == "test" and info["thresholds"]["method"] == "fixed"


def test_per_category_thresholds_and_a_threshold_that_flags_nothing(tmp_path):
    evaluator = Evaluator(plot_curves=False)
    model = OracleModel(evaluator)
    model.thresholds = {"a": fixed_thresholds(0.0, 0.0), "b": fixed_thresholds(6.0, 6.0).to_dict()}
    _trainer(tmp_path, logger=False).test(model, dataloaders=_loader(_items(tmp_path / "data")))
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    for column in ("image_precision", "image_recall", "image_f1", "pixel_precision", "pixel_recall", "pixel_f1"):
        assert float(rows["a"][column]) == 1.0, column
    assert rows["b"]["image_precision"] == "" and float(rows["b"]["image_recall"]) == 0.0  # nothing flagged
    assert float(rows["b"]["pixel_f1"]) == 0.0 and rows["mean"]["image_precision"] == ""
    assert float(rows["mean"]["image_f1"]) == 0.5
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["thresholds"]["image"] == {"a": 0.0, "b": 6.0}


def test_without_thresholds_no_operating_columns(tmp_path):
    _trainer(tmp_path, logger=False).test(OracleModel(Evaluator(plot_curves=False)),
                                          dataloaders=_loader(_items(tmp_path / "data")))
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "thresholds" not in info and not any("precision" in c for c in info["columns"])


def test_nan_map_is_a_one_line_error_naming_the_image_and_the_model(tmp_path):
    class Diverged(OracleModel):
        def score_batch(self, batch):
            output = super().score_batch(batch)
            output.anomaly_map[0, 0, 0] = float("nan")
            return output

    items = _items(tmp_path / "data")
    with pytest.raises(NonFiniteScoresError) as err:
        _trainer(tmp_path, logger=False).test(Diverged(Evaluator(plot_curves=False)), dataloaders=_loader(items))
    message = str(err.value)
    assert "\n" not in message and "model Diverged" in message and items[0]["path"] in message
    assert items[1]["path"] not in message


def test_disabled_evaluator_computes_and_writes_nothing(tmp_path):
    evaluator = Evaluator(enabled=False)
    _trainer(tmp_path, logger=False).test(OracleModel(evaluator), dataloaders=_loader(_items(tmp_path / "data")))
    assert evaluator.results == [] and not (tmp_path / "run" / "metrics.json").exists()
