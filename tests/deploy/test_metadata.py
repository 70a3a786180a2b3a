"""``metadata.json``: written beside the graphs, read back by the inferencer, refused when malformed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from anomaly_bench.data.transforms import _lookup_table
from anomaly_bench.deploy import metadata as md
from anomaly_bench.deploy.export import ExportError, export_model
from anomaly_bench.deploy.inferencer import Inferencer
from anomaly_bench.metrics.thresholds import Thresholds
from anomaly_bench.types import AnomalyOutput
from tests.deploy.conftest import Case


def test_metadata_round_trip(crad_case: Case) -> None:
    folder = crad_case.folders["onnx"]
    data = md.read_metadata(folder)
    assert json.loads((folder / md.METADATA_FILE).read_text()) == data
    assert data["format"] == "onnx" and data["runtime"] == "onnxruntime"
    assert data["method"] == "anomaly_bench.models.crad.lightning_model.CRAD"
    assert data["torch_model"] == "anomaly_bench.models.crad.torch_model.CRADModel"
    assert data["input"]["size"] == [32, 32] and data["input"]["shape"] == ["batch", 3, 32, 32]
    assert data["graphs"] == [{"category": None, "file": "model.onnx", "files": ["model.onnx"], "call": "images",
                               "dynamic_batch": True, "bytes": (folder / "model.onnx").stat().st_size}]
    assert data["preprocessing"]["resize"]["shrink"] == "area" and data["preprocessing"]["resize"]["enlarge"] == "bilinear"
    assert data["versions"]["torch"] == torch.__version__.split("+")[0] or data["versions"]["torch"]
    assert data["versions"]["onnx"] and data["versions"]["anomaly_bench"]
    # the normalisation recorded is the datamodule's, value for value
    inferencer = Inferencer(folder)
    np.testing.assert_array_equal(inferencer._table, _lookup_table("imagenet"))
    # thresholds survive as Thresholds records
    restored = {c: Thresholds.from_dict(r, f"thresholds[{c}]") for c, r in data["thresholds"].items()}
    assert restored == crad_case.thresholds
    openvino = md.read_metadata(crad_case.folders["openvino"])
    assert openvino["graphs"][0]["files"] == ["model.xml", "model.bin"]
    assert openvino["exporter"]["weights"].startswith("float32")


def test_per_category_export_names_each_graph_by_its_category(patchdiff_case: Case) -> None:
    data = md.read_metadata(patchdiff_case.folders["onnx"])
    assert data["per_category_graphs"] is True and data["categories"] == ["bottle", "cable"]
    assert [(g["category"], g["file"]) for g in data["graphs"]] == [("bottle", "bottle.onnx"), ("cable", "cable.onnx")]
    assert data["normalization"]["name"] == "minus_one_one"
    assert {p.name for p in patchdiff_case.folders["openvino"].iterdir()} == \
        {"bottle.xml", "bottle.bin", "cable.xml", "cable.bin", md.METADATA_FILE}
    inferencer = Inferencer(patchdiff_case.folders["onnx"])
    with pytest.raises(md.ExportMetadataError, match="one graph per category"):
        inferencer.predict(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(md.ExportMetadataError, match="no graph for category 'screw'"):
        inferencer.predict(np.zeros((48, 48, 3), np.uint8), category="screw")


def _broken(folder: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = json.loads((copy / md.METADATA_FILE).read_text())
    change(data)
    (copy / md.METADATA_FILE).write_text(json.dumps(data))
    return copy


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("graphs"), "missing key 'graphs'"),
    (lambda d: d.update(format="tflite"), "format must be one of"),
    (lambda d: d.update(schema_version=99), "newer than"),
    (lambda d: d["input"].update(size=[32]), "input.size"),
    (lambda d: d.update(graphs=[{"category": None, "file": "a"}, {"category": "x", "file": "b"}]), "one graph"),
    (lambda d: d.update(thresholds={"all": {"image": "high"}}), r"thresholds\['all'\].image"),
    (lambda d: d["graphs"][0].update(file="gone.onnx"), "gone.onnx"),
])
def test_malformed_metadata_is_a_one_line_error(crad_case: Case, tmp_path: Path, change, message: str) -> None:
    folder = _broken(crad_case.folders["onnx"], tmp_path, change)
    with pytest.raises(md.ExportMetadataError, match=message) as caught:
        Inferencer(folder).predict(np.zeros((32, 32, 3), np.uint8))
    assert "\n" not in str(caught.value)


def test_missing_export_folder_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(md.ExportMetadataError, match="metadata.json not found"):
        Inferencer(tmp_path)


class _Doubler(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        anomaly_map = images.mean(1) * 2
        return AnomalyOutput(anomaly_map, anomaly_map.flatten(1).amax(1))


def test_export_replaces_an_earlier_export_and_refuses_other_folders(tmp_path: Path) -> None:
    target = tmp_path / "export"
    export_model(_Doubler(), target, "torch", 8, "none")
    (target / "stale.pt2").write_text("left over")
    export_model(_Doubler(), target, "torch", 8, "none")
    assert sorted(p.name for p in target.iterdir()) == [md.METADATA_FILE, "model.pt2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folders left
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_text("x")
    with pytest.raises(ExportError, match="not an export folder"):
        export_model(_Doubler(), other, "torch", 8, "none")
    assert (other / "holiday.jpg").read_text() == "x"


class _DataDependent(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        anomaly_map = images.mean(1)
        if anomaly_map.sum() > 0:  # a Python branch on data: no fixed graph exists
            anomaly_map = anomaly_map * 2
        return AnomalyOutput(anomaly_map, anomaly_map.flatten(1).amax(1))


class _Maps(NamedTuple):
    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


class _ScriptableDataDependent(torch.nn.Module):
    """The same branch, returning a NamedTuple TorchScript can compile (it cannot compile AnomalyOutput)."""

    def forward(self, images: torch.Tensor) -> _Maps:
        anomaly_map = images.mean(1)
        if bool(anomaly_map.sum() > 0):
            anomaly_map = anomaly_map * 2
        return _Maps(anomaly_map, anomaly_map.flatten(1).amax(1))


def test_a_forward_that_branches_on_data_is_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"torch.export cannot capture .* at test_metadata.py:\d+ \(if anomaly_map"):
        export_model(_DataDependent(), tmp_path / "x", "onnx", 8, "none")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model,program", [(_ScriptableDataDependent(), "torchscript"),
                                           (_DataDependent(), "pickled_module")])
def test_the_torch_format_falls_back_when_torch_export_cannot(tmp_path: Path, model: torch.nn.Module,
                                                               program: str) -> None:
    data = export_model(model, tmp_path / "t", "torch", 8, "none")
    assert data["torch_program"] == program and "torch.export cannot capture" in data["notes"][0]
    inferencer = Inferencer(tmp_path / "t")
    bright, dark = np.full((8, 8, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)
    assert inferencer.predict(bright).score == pytest.approx(2 * 200 / 255, rel=1e-6)  # the branch is kept
    assert inferencer.predict(dark).score == 0.0


def test_a_graph_that_disagrees_with_torch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomaly_bench.deploy import runtimes

    original = runtimes.OnnxRuntimeSession.run
    monkeypatch.setattr(runtimes.OnnxRuntimeSession, "run",
                        lambda self, images, category=None: tuple(o * 1.001 for o in original(self, images)))
    with pytest.raises(ExportError, match=r"differs from the torch model by more than 0.0001"):
        export_model(_Doubler(), tmp_path / "x", "onnx", 8, "none")
    assert not (tmp_path / "x").exists()
