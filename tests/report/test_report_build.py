"""The report builder without a browser: sections, no URL, size, order, paper numbers only on real
data, mean ± std over seeds, the run page, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly_bench.benchmark.paper import load_paper_results, published
from anomaly_bench.report import SYNTHETIC_MARKER, ReportInputError, build_report, report_main
from anomaly_bench.report.sections import f1_max_threshold
from tests.report.fixture_grid import CATEGORIES, DATASET, MODELS, SEEDS, write_fixture_grid

URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _active_table(text: str) -> str:
    match = re.search(r'<div class="metric-table active"[^>]*>(.*?)</div>', text, re.S)
    assert match, "no visible results table"
    return match.group(1)


def _rows(table_html: str) -> list[str]:
    return re.findall(r'<tr class="method-row">(.*?)</tr>', table_html, re.S)


@pytest.fixture(scope="module")
def grid_report(fixture_grid, tmp_path_factory) -> str:
    return _html(build_report(fixture_grid, output=tmp_path_factory.mktemp("out") / "report.html"))


def _copy_grid(fixture_grid: Path, tmp_path: Path, grid_yaml: str | None = "keep") -> Path:
    target = tmp_path / "grid"
    shutil.copytree(fixture_grid, target)
    if grid_yaml is None:
        (target / "grid.yaml").unlink()
    return target


def test_grid_report_has_every_section_and_no_url(grid_report):
    for anchor in ("results", "curves", "gallery", "speed", "runs"):
        assert f'<section id="{anchor}">' in grid_report
    assert URL.search(grid_report) is None  # no http(s)://, no file://, nothing to fetch
    sources = re.findall(r'\ssrc="([^"]*)"', grid_report)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "Content-Security-Policy" in grid_report and "default-src 'none'" in grid_report
    for category in CATEGORIES:
        assert f"{DATASET} (unified) / {category}</h3>" in grid_report
    assert grid_report.count('<svg class="chart"') == len(CATEGORIES) * 5  # image ROC/PR, pixel ROC/PR, PRO
    assert len(grid_report.encode()) < 10 * 2**20


def test_one_row_per_method_with_the_reference_first(grid_report):
    rows = _rows(_active_table(grid_report))
    assert len(rows) == len(MODELS)
    assert list(MODELS)[0] == "crad"  # the grid lists crad first...
    assert rows[0].startswith('<td class="name">patchcore') and "badge ref" in rows[0]  # ...PatchCore leads
    assert 'data-metric="image_auroc"' in re.search(
        r'<div class="metric-table active"[^>]*>', grid_report
    ).group(0)


def _metric(run_dir: Path, category: str, metric: str) -> float:
    rows = json.loads((run_dir / "metrics.json").read_text())["rows"]
    return next(r[metric] for r in rows if r["category"] == category)


def test_mean_and_std_over_the_two_seeds(fixture_grid, grid_report):
    cells = fixture_grid / "cells" / "crad" / DATASET / "all"
    row = _rows(_active_table(grid_report))[1]
    for category in (*CATEGORIES, "mean"):
        values = np.array([100 * _metric(cells / f"seed{s}", category, "image_auroc") for s in SEEDS])
        expected = f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
        assert expected in row, (category, expected, row)


def test_paper_numbers_and_differences_on_real_data(grid_report):
    paper = published(load_paper_results())
    crad = paper[
        (paper["method"] == "CRAD")
        & (paper["dataset"] == "MVTecAD")
        & (paper["setting"] == "unified")
        & (paper["metric"] == "image_auroc")
    ]
    assert not crad.empty
    row = _rows(_active_table(grid_report))[1]
    shown = re.findall(r'<span class="paper">paper ([\d.]+) · diff ([+-][\d.]+)</span>', row)
    assert len(shown) == len(crad[crad["category"].isin([*CATEGORIES, "mean"])])
    for category in CATEGORIES:
        value = float(crad[crad["category"] == category]["value"].iloc[0])
        assert f"paper {value:.1f}" in row
    assert "paper numbers: MVTecAD" in grid_report


def test_no_paper_numbers_for_a_synthetic_stand_in(fixture_grid, fixture_data, tmp_path):
    grid = write_fixture_grid(tmp_path / "synthetic", fixture_data, synthetic=True, seeds=(0,))
    text = _html(build_report(grid))
    assert 'class="paper"' not in text and "diff" not in _active_table(text)
    assert "synthetic stand-in for MVTecAD" in text
    assert "±" not in _active_table(text)  # one seed: no std


def test_the_synthetic_marker_file_also_marks_a_dataset(fixture_grid, fixture_data, tmp_path):
    grid = _copy_grid(fixture_grid, tmp_path)
    marked = tmp_path / "marked_data"
    shutil.copytree(fixture_data, marked)
    (marked / SYNTHETIC_MARKER).write_text("{}")
    for path in [grid / "grid.yaml", *grid.glob("cells/*/*/*/*/cell_config.yaml")]:
        path.write_text(path.read_text().replace(str(fixture_data), str(marked)))
    text = _html(build_report(grid))
    assert 'class="paper"' not in text and "synthetic stand-in for MVTecAD" in text


def test_without_grid_facts_nothing_is_compared(fixture_grid, tmp_path):
    grid = _copy_grid(fixture_grid, tmp_path, grid_yaml=None)
    text = _html(build_report(grid))
    assert 'class="paper"' not in text
    assert "the grid does not say this is a paper&#x27;s real dataset" in text
    assert len(_rows(_active_table(text))) == len(MODELS)
    assert _rows(_active_table(text))[0].startswith('<td class="name">patchcore')  # from the model class


def test_a_plain_results_tree_without_cell_files(fixture_grid, tmp_path):
    """``results/<Model>/<DataModule>/<category>/version_N``: names from the saved config."""
    for model in MODELS:
        for seed in SEEDS:
            source = fixture_grid / "cells" / model / DATASET / "all" / f"seed{seed}"
            target = tmp_path / "results" / model.upper() / "MVTecAD" / "all" / f"version_{seed}"
            shutil.copytree(source, target)
            (target / "cell_status.json").unlink()
            (target / "cell_config.yaml").rename(target / "config_test.yaml")
    text = _html(build_report(tmp_path / "results"))
    rows = _rows(_active_table(text))
    assert len(rows) == len(MODELS) and rows[0].startswith('<td class="name">PATCHCORE')
    assert "MVTecAD (unified)" in text and "± " in rows[0]  # two seeds from seed_everything


def test_size_budget_shrinks_the_gallery(fixture_grid, tmp_path):
    full = build_report(fixture_grid, output=tmp_path / "full.html")
    size = full.stat().st_size
    small = build_report(fixture_grid, output=tmp_path / "small.html", max_bytes=size - 1)
    assert small.stat().st_size < size
    full_rows = _html(full).count("<tr data-outcomes=")
    assert 0 < _html(small).count("<tr data-outcomes=") < full_rows


def test_without_a_patchcore_run_the_papers_patchcore_row_leads(fixture_grid, tmp_path):
    grid = _copy_grid(fixture_grid, tmp_path)
    shutil.rmtree(grid / "cells" / "patchcore")
    table_html = _active_table(_html(build_report(grid)))
    assert len(_rows(table_html)) == 1
    reference = table_html.index('<tr class="reference-row">')
    assert reference < table_html.index('<tr class="method-row">')
    paper = published(load_paper_results())
    value = paper[
        (paper["method"] == "PatchCore")
        & (paper["dataset"] == "MVTecAD")
        & (paper["category"] == "bottle")
        & (paper["metric"] == "image_auroc")
    ]["value"]
    assert f"{float(value.iloc[0]):.1f}" in table_html[reference : table_html.index("</tr>", reference)]


def test_failed_cells_are_listed_with_their_error(fixture_grid, tmp_path):
    grid = _copy_grid(fixture_grid, tmp_path)
    failed = grid / "cells" / "crad" / DATASET / "all" / "seed1"
    for name in ("metrics.json", "metrics.csv"):
        (failed / name).unlink()
    status = json.loads((failed / "cell_status.json").read_text())
    status.update(status="failed", error="fit exited with code 3")
    (failed / "cell_status.json").write_text(json.dumps(status))
    text = _html(build_report(grid))
    assert "<h3>Failed cells</h3>" in text and "fit exited with code 3" in text
    assert 'href="cells/crad/synth_mvtec/all/seed1/"' in text
    assert "±" not in _rows(_active_table(text))[1]  # crad has one seed left


def test_gallery_shows_the_same_images_for_every_method(grid_report):
    rows = re.findall(r'<tr data-outcomes="[^"]*">(.*?)</tr>', grid_report, re.S)
    assert rows
    for row in rows:
        assert row.count("<img ") == 1 + len(MODELS)  # the input and one map per method
        assert "not saved" not in row
    assert "(recorded by the run)" in grid_report  # patchcore's metrics.json has a threshold
    assert "(oracle: F1-max on the test labels" in grid_report  # crad's does not


def test_run_report(fixture_grid, tmp_path):
    with_threshold = fixture_grid / "cells" / "patchcore" / DATASET / "all" / "seed0"
    text = _html(build_report(with_threshold, output=tmp_path / "a.html"))
    for anchor in ("metrics", "curves", "histograms", "gallery", "speed", "provenance"):
        assert f'<section id="{anchor}">' in text
    assert URL.search(text) is None
    threshold = json.loads((with_threshold / "metrics.json").read_text())["thresholds"]["image"]
    assert text.count(f"threshold {threshold:.4g}</text>") == len(CATEGORIES)
    without = fixture_grid / "cells" / "crad" / DATASET / "all" / "seed0"
    text = _html(build_report(without, output=tmp_path / "b.html"))
    assert 'class="marker"' not in text.split('<section id="histograms">')[1].split("</section>")[0]
    assert "No threshold recorded in metrics.json" in text


def test_f1_max_threshold_known_answers():
    assert f1_max_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.8
    assert f1_max_threshold([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == 0.5  # F1 0.8 beats 0.67 at 0.9
    # a threshold at 0.5 flags all three tied images (F1 0.67, as at 0.9), never only the anomalous one
    assert f1_max_threshold([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.5]) == 0.9
    assert f1_max_threshold([1, 1], [0.1, 0.2]) is None


def test_cli(fixture_grid, tmp_path, capsys):
    out = tmp_path / "x" / "r.html"
    assert report_main([str(fixture_grid), "--output", str(out), "--metric", "pixel_aupro"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert 'data-metric="pixel_aupro"' in re.search(
        r'<div class="metric-table active"[^>]*>', _html(out)
    ).group(0)
    assert report_main([str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing: not a directory" in error
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportInputError, match="no run below it"):
        build_report(tmp_path / "empty")
    with pytest.raises(SystemExit) as done:
        report_main(["--help"])
    assert done.value.code == 0
    helptext = capsys.readouterr().out
    for flag in ("--output", "--metric", "--paper_results", "--max_mb"):
        assert flag in helptext


def test_cli_refuses_an_unknown_metric_and_bad_options(fixture_grid, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert report_main([str(fixture_grid), "--output", str(out), "--metric", "image_aurco"]) == 2
    error = capsys.readouterr().err
    assert "--metric 'image_aurco' is not in these runs' metrics; did you mean 'image_auroc'" in error
    assert "pixel_aupro" in error and not out.exists()  # the known names are listed, nothing is written
    for flags, message in ((["--max_mb", "-1"], "--max_mb must be a size above 0 MiB, got -1"),
                           (["--paper_results", str(tmp_path / "nope.csv")], "nope.csv does not exist")):
        with pytest.raises(SystemExit) as done:
            report_main([str(fixture_grid), "--output", str(out), *flags])
        assert done.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_thresholds_in_either_metrics_json_shape(fixture_grid, tmp_path):
    from anomaly_bench.report.collect import read_run

    run_dir = tmp_path / "run"
    shutil.copytree(fixture_grid / "cells" / "crad" / DATASET / "all" / "seed0", run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert read_run(run_dir).threshold("bottle") is None  # crad's file has none
    metrics["thresholds"] = {"image": 2.5, "pixel": None}  # one set for every category
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert read_run(run_dir).threshold("carpet") == 2.5
    metrics["thresholds"] = {"image": {"bottle": 1.5, "carpet": None}, "per_category": {}}  # one per category
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    run = read_run(run_dir)
    assert run.threshold("bottle") == 1.5 and run.threshold("carpet") is None
