"""The terminal table of a benchmark: PatchCore (the reference) first, each model's difference to
it, and no comparison with the papers' numbers on synthetic stand-ins (issue 15.5)."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from anomaly_bench.benchmark.grid import parse_grid
from anomaly_bench.benchmark.report import build_report, print_report


def _grid(tmp_path, synthetic: bool):
    raw = {
        "name": "g",
        "models": [{"name": "crad", "class_path": "anomaly_bench.models.CRAD", "paper_method": "CRAD"},
                   {"name": "pc", "class_path": "anomaly_bench.models.PatchCore", "paper_method": "PatchCore"}],
        "datasets": [{"name": "mvtec", "class_path": "anomaly_bench.data.MVTecAD",
                      "init_args": {"root": str(tmp_path / "data")}, "paper_dataset": "MVTecAD"}],
        "seeds": [0],
    }
    if synthetic:
        raw["synth"] = [{"layout": "mvtec", "root": str(tmp_path / "data")}]
    return parse_grid(raw, base_dir=tmp_path)


def _long(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = []
    for model, metrics in values.items():
        for metric, value in metrics.items():
            for category in ("carpet", "mean"):
                rows.append({"grid": "g", "model": model, "dataset": "mvtec", "setting": "unified",
                             "category": category, "seed": 0, "metric": metric, "value": value,
                             "cell_id": f"{model}/mvtec/all/seed0"})
    return pd.DataFrame(rows)


def _printed(report) -> str:
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=100, color_system=None))
    return buffer.getvalue()


VALUES = {"crad": {"image_auroc": 0.91, "pixel_auroc": 0.95}, "pc": {"image_auroc": 0.97, "pixel_auroc": 0.93}}


def test_reference_row_first_with_differences_and_no_paper_diffs_on_synthetic_data(tmp_path):
    report = build_report(_grid(tmp_path, synthetic=True), _long(VALUES))
    text = _printed(report)
    lines = [line for line in text.splitlines() if line.split()[:1] in (["pc"], ["crad"])]
    assert lines[0].split()[:2] == ["pc", "(ref)"], text  # the grid lists crad first; the reference leads
    crad = lines[1].split()
    assert crad[0] == "crad" and crad[1:3] == ["91.0", "95.0"]
    assert crad[-2:] == ["-6.0", "+2.0"], text  # image and pixel AUROC minus the reference's
    assert "minus the reference row (pc)" in text
    assert report.synthetic_datasets == ["mvtec"] and report.paper.empty
    assert "vs. paper" not in text and "is synthetic" in text


def test_real_dataset_keeps_the_paper_comparison(tmp_path):
    report = build_report(_grid(tmp_path, synthetic=False), _long(VALUES))
    assert report.synthetic_datasets == []
    assert not report.paper.empty and set(report.paper["model"]) >= {"pc"}  # PatchCore's MVTec AD row exists
    assert "ours vs. paper" in _printed(report)


def test_without_a_reference_model_there_is_no_difference_column(tmp_path):
    report = build_report(_grid(tmp_path, synthetic=True), _long({"crad": VALUES["crad"]}))
    text = _printed(report)
    assert "Δ" not in text and "(ref)" not in text
    assert "91.0" in text
