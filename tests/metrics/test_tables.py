"""``write_tables`` / ``read_tables``: one results contract, written atomically, read back exactly,
and what the benchmark reads through it."""

from __future__ import annotations

import csv
import json

import pytest

from anomaly_bench.benchmark.results import read_cell_metrics, read_metrics_json
from anomaly_bench.metrics.report import (
    MetricsFileError,
    ReportConfig,
    metric_values,
    read_tables,
    with_mean_row,
    write_tables,
)


def _rows():
    return with_mean_row([
        {"category": "bottle", "image_auroc": 0.9, "pixel_aupro": 0.75, "image_auroc_logical": None,
         "num_images": 10, "num_anomalous": 4},
        {"category": "cable", "image_auroc": 0.5, "pixel_aupro": None, "image_auroc_logical": 0.25,
         "num_images": 6, "num_anomalous": 3},
    ])


def test_read_tables_is_the_inverse_of_write_tables(tmp_path):
    rows = _rows()
    extra = {"modes_used": {"bottle": "exact"}, "stage": "test", "thresholds": {"image": 1.5, "pixel": None}}
    csv_path, json_path = write_tables(rows, tmp_path, ReportConfig(fpr_limit=0.2), extra)
    back, meta = read_tables(tmp_path)
    assert back == rows
    assert read_tables(json_path) == (back, meta)  # the folder or the file
    assert meta["fpr_limit"] == 0.2 and meta["modes_used"] == {"bottle": "exact"}
    assert meta["thresholds"] == {"image": 1.5, "pixel": None} and "rows" not in meta
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == meta["columns"] and [r["category"] for r in table] == ["bottle", "cable", "mean"]
    assert table[1]["pixel_aupro"] == "" and table[2]["num_images"] == "16"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_row_json_refuses_leaves_the_previous_files_untouched(tmp_path):
    write_tables(_rows(), tmp_path, ReportConfig())
    before = (tmp_path / "metrics.csv").read_bytes(), (tmp_path / "metrics.json").read_bytes()
    bad = [{"category": "x", "image_auroc": float("nan")}]
    with pytest.raises(ValueError):
        write_tables(bad, tmp_path, ReportConfig())
    assert ((tmp_path / "metrics.csv").read_bytes(), (tmp_path / "metrics.json").read_bytes()) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_tables_errors_name_the_file(tmp_path):
    with pytest.raises(MetricsFileError, match="no metrics.json in") as err:
        read_tables(tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "metrics.json").write_text('{"metric_version": "1.0", "rows": [')
    with pytest.raises(MetricsFileError, match="not valid JSON"):
        read_tables(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"per_category": {"a": {"image_auroc": 0.7}}}))
    with pytest.raises(MetricsFileError, match="not a metrics file written by anomaly_bench") as err:
        read_tables(tmp_path)
    assert "per_category" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "metrics.json").write_text(json.dumps({"metric_version": "1.0", "rows": [{"image_auroc": 1}]}))
    with pytest.raises(MetricsFileError, match=r"rows\[0\]"):
        read_tables(tmp_path)


def test_metric_values_leave_out_counts_and_empty_cells():
    values = metric_values(_rows())
    assert ("bottle", "image_auroc", 0.9) in values and ("mean", "image_auroc", pytest.approx(0.7)) in values
    assert not any(metric.startswith("num_") for _, metric, _ in values)
    assert not any(c == "cable" and m == "pixel_aupro" for c, m, _ in values)  # None is no number


def test_the_benchmark_reads_cells_through_read_tables(tmp_path):
    ours = tmp_path / "ours"
    write_tables(_rows(), ours, ReportConfig())
    assert read_cell_metrics(ours) == metric_values(_rows()) == read_metrics_json(ours / "metrics.json")
    # another tool's cell: its own metrics.json shape, a metrics.csv beside it -> the table is read
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"per_category": {"a": {"image_auroc": 0.7}}}))
    (other / "metrics.csv").write_text("category,image_auroc,n_images\na,0.7,5\nmean,0.7,5\n")
    assert sorted(read_cell_metrics(other)) == [("a", "image_auroc", 0.7), ("mean", "image_auroc", 0.7)]
    (other / "metrics.csv").unlink()
    with pytest.raises(MetricsFileError):
        read_cell_metrics(other)
    assert read_cell_metrics(tmp_path / "not_run_yet") == []
