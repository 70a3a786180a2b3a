"""The report of a grid (or any folder of runs): methods x categories tables with mean ± std over
seeds and the papers' numbers on real datasets, overlaid curves, side-by-side galleries, speed and
memory, and every run's config and versions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_bench.benchmark.aggregate import (
    dataset_mean,
    format_mean_std,
    higher_is_better,
    metric_order,
    seed_stats,
    to_percent,
)
from anomaly_bench.benchmark.paper import PaperTableError, compare_with_paper, load_paper_results, published
from anomaly_bench.callbacks.gallery import read_gallery
from anomaly_bench.metrics.curve_data import read_run_curves
from anomaly_bench.report.collect import RunRecord, failed_cells
from anomaly_bench.report.grid_info import (
    REFERENCE_METHOD,
    GridInfo,
    is_paper_protocol,
    model_order,
    paper_dataset,
    paper_method,
)
from anomaly_bench.report.html import (
    details,
    esc,
    fmt_bytes,
    fmt_number,
    page,
    relative_href,
    scale_color,
    table,
)
from anomaly_bench.report.sections import GalleryColumn, curve_panels, gallery_table, threshold_for
from anomaly_bench.report.svg import color_of

CATEGORY_MEAN = "mean"
VERSION_KEYS = ("anomaly_bench", "torch", "lightning", "timm")


@dataclass
class GridData:
    """The runs and everything derived from them once."""

    runs: list[RunRecord]
    info: GridInfo
    report_file: Path
    models: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    real: dict[str, str] = field(default_factory=dict)  # dataset -> the paper's dataset name (real data only)
    synthetic_stand_ins: dict[str, str] = field(default_factory=dict)  # dataset -> paper dataset it imitates
    stats: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # model dataset setting category metric mean std n_seeds
    paper: dict[tuple, tuple[float, float]] = field(
        default_factory=dict
    )  # key -> (paper value, ours - paper)
    references: dict[tuple, float] = field(
        default_factory=dict
    )  # (dataset, category, metric) -> PatchCore paper


def long_table(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """model, dataset, setting, category, seed, metric, value: one row per number of every run.
    A run's ``mean`` row is dropped where it has category rows (means are recomputed per seed).

    Args:
        runs: the runs.
    """
    records = []
    for run in runs:
        categories = {c for c, _, _ in run.long if c.strip().lower() != CATEGORY_MEAN}
        for category, metric, value in run.long:
            if category.strip().lower() == CATEGORY_MEAN:
                if categories:
                    continue
                category = run.category_label
            records.append(
                {
                    "model": run.model,
                    "dataset": run.dataset,
                    "setting": run.setting,
                    "category": category,
                    "seed": run.seed if run.seed is not None else 0,
                    "metric": metric,
                    "value": value,
                }
            )
    return pd.DataFrame.from_records(
        records, columns=["model", "dataset", "setting", "category", "seed", "metric", "value"]
    )


def _prepare(
    runs: list[RunRecord], info: GridInfo, report_file: Path, paper_path: str | Path | None, notes: list[str]
) -> GridData:
    data = GridData(runs, info, report_file)
    by_model: dict[str, list[RunRecord]] = defaultdict(list)
    by_dataset: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_model[run.model].append(run)
        by_dataset[run.dataset].append(run)
    data.methods = {m: paper_method(info, m, rs) for m, rs in by_model.items()}
    data.models = model_order(info, by_model, data.methods)
    for dataset, rs in by_dataset.items():
        name = paper_dataset(info, dataset, rs)
        if name is not None:
            data.real[dataset] = name
        elif dataset in info.datasets and info.datasets[dataset].paper_dataset:
            data.synthetic_stand_ins[dataset] = info.datasets[dataset].paper_dataset
    pct = to_percent(long_table(runs))
    if pct.empty:
        return data
    categories = seed_stats(
        pct[pct["category"] != CATEGORY_MEAN], by=["model", "dataset", "setting", "category", "metric"]
    )
    means = seed_stats(dataset_mean(pct)).assign(category=CATEGORY_MEAN)
    data.stats = pd.concat([categories, means], ignore_index=True)
    if data.real:
        _join_papers(data, paper_path, notes)
    return data


def _join_papers(data: GridData, paper_path: str | Path | None, notes: list[str]) -> None:
    try:
        paper = load_paper_results(paper_path)
    except PaperTableError as err:
        notes.append(f"no comparison with the papers: {err}")
        return
    ours = data.stats[data.stats["dataset"].isin(list(data.real))]
    joined = compare_with_paper(ours, paper, data.methods, data.real)
    for r in joined.itertuples():
        data.paper[(r.model, r.dataset, r.setting, r.category, r.metric)] = (float(r.paper), float(r.diff))
    reference = published(paper)
    reference = reference[reference["method"] == REFERENCE_METHOD]
    for dataset, name in data.real.items():
        for r in reference[reference["dataset"] == name].itertuples():
            data.references.setdefault((dataset, r.category, r.metric), float(r.value))


# ---------------------------------------------------------------------------------- results
def _results_group(data: GridData, dataset: str, setting: str, chosen: str, group_id: str) -> str:
    stats = data.stats[(data.stats["dataset"] == dataset) & (data.stats["setting"] == setting)]
    metrics = sorted(set(stats["metric"]), key=metric_order)
    if not metrics:
        return '<p class="note">No metrics.</p>'
    chosen = chosen if chosen in metrics else metrics[0]
    categories = sorted(set(stats["category"]) - {CATEGORY_MEAN}) + [CATEGORY_MEAN]
    models = [m for m in data.models if m in set(stats["model"])]
    has_reference = any(data.methods.get(m, "").lower() == REFERENCE_METHOD.lower() for m in models)
    real = dataset in data.real
    parts = []
    options = "".join(
        f'<option value="{esc(m)}"{" selected" if m == chosen else ""}>{esc(m)}</option>' for m in metrics
    )
    parts.append(f'<p>metric <select class="metric-select" data-group="{group_id}">{options}</select></p>')
    lookup = {(r.model, r.category, r.metric): r for r in stats.itertuples()}
    for metric in metrics:
        values = [r.mean for r in stats[stats["metric"] == metric].itertuples() if pd.notna(r.mean)]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        better = higher_is_better(metric)
        rows, row_attrs = [], []
        if real and not has_reference:
            ref = [data.references.get((dataset, c, metric)) for c in categories]
            if any(v is not None for v in ref):
                rows.append(
                    [
                        f'{REFERENCE_METHOD}<span class="badge ref">reference, paper</span>',
                        *[fmt_number(v) for v in ref],
                    ]
                )
                row_attrs.append('class="reference-row"')
        for model in models:
            badges = ""
            if data.methods.get(model, "").lower() == REFERENCE_METHOD.lower():
                badges += '<span class="badge ref">reference</span>'
            if is_paper_protocol(data.info, model, [r for r in data.runs if r.model == model]):
                badges += '<span class="badge proto">paper protocol</span>'
            cells = [f"{esc(model)}{badges}"]
            for category in categories:
                r = lookup.get((model, category, metric))
                if r is None:
                    cells.append("-")
                    continue
                text = esc(format_mean_std(r.mean, r.std, int(r.n_seeds)))
                paper = data.paper.get((model, dataset, setting, category, metric))
                if paper is not None:
                    text += f'<span class="paper">paper {paper[0]:.1f} · diff {paper[1]:+.1f}</span>'
                style = scale_color(float(r.mean) if pd.notna(r.mean) else None, low, high, better)
                cells.append(f'<span style="{style};display:block">{text}</span>' if style else text)
            rows.append(cells)
            row_attrs.append('class="method-row"')
        hidden = "" if metric == chosen else " hidden"
        active = " active" if metric == chosen else ""
        parts.append(
            f'<div class="metric-table{hidden}{active}" data-metric-group="{group_id}" '
            f'data-metric="{esc(metric)}">'
            + table(
                ["method", *categories],
                rows,
                attrs=f'class="results-table" data-metric="{esc(metric)}"',
                row_attrs=row_attrs,
            )
            + "</div>"
        )
    n_seeds = int(stats["n_seeds"].max()) if not stats.empty else 1
    notes = ["Rate metrics in percent"]
    notes.append(f"mean ± sample std over {n_seeds} seeds" if n_seeds > 1 else "one seed: no std")
    notes.append(
        "mean column: class average per seed, then over seeds; colours from worst (red) to best (green)"
    )
    if real:
        notes.append(
            f"paper numbers: {data.real[dataset]} in benchmarks/paper_results.csv, diff = ours - paper"
        )
    elif dataset in data.synthetic_stand_ins:
        notes.append(
            f"synthetic stand-in for {data.synthetic_stand_ins[dataset]}: not compared with the papers' "
            "numbers (a comparison would mean nothing)"
        )
    else:
        notes.append("no comparison with the papers: the grid does not say this is a paper's real dataset")
    parts.append(f'<p class="note">{esc("; ".join(notes))}.</p>')
    return "".join(parts)


def results_section(data: GridData, chosen: str) -> str:
    """One table per (dataset, setting) for each metric; a selector switches the metric.

    Args:
        data: the prepared grid data.
        chosen: the metric shown first.
    """
    if data.stats.empty:
        return '<p class="note">No metrics found in the runs.</p>'
    parts = []
    groups = data.stats[["dataset", "setting"]].drop_duplicates().sort_values(["dataset", "setting"])
    for i, (dataset, setting) in enumerate(groups.itertuples(index=False)):
        parts.append(f"<h3>{esc(dataset)} ({esc(setting)})</h3>")
        parts.append(_results_group(data, dataset, setting, chosen, f"group{i}"))
    return "".join(parts)


# ------------------------------------------------------------------------- curves & gallery
def _first_seed_runs(data: GridData) -> dict[tuple[str, str, str], list[RunRecord]]:
    """(dataset, setting, model) -> that model's runs there, smallest seed first."""
    out: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for run in data.runs:
        out[(run.dataset, run.setting, run.model)].append(run)
    for runs in out.values():
        runs.sort(key=lambda r: (r.seed if r.seed is not None else 0, r.category_label))
    return out


def curves_and_gallery(data: GridData, side: int, max_rows: int) -> tuple[str, str]:
    """The curve section and the gallery section, per (dataset, setting, category).

    Args:
        data: the prepared grid data.
        side: long side of the gallery pictures.
        max_rows: the most gallery images per category.
    """
    runs = _first_seed_runs(data)
    curves_by: dict[tuple[str, str, str], dict[str, tuple]] = defaultdict(dict)
    galleries_by: dict[tuple[str, str, str], dict[str, GalleryColumn]] = defaultdict(dict)
    for (dataset, setting, model), model_runs in runs.items():
        scores_cache: dict[Path, list[dict]] = {}
        for run in model_runs:
            for category, curves in read_run_curves(run.run_dir).items():
                curves_by[(dataset, setting, category)].setdefault(model, (run, curves))
            for category, index in read_gallery(run.run_dir).items():
                key = (dataset, setting, category)
                if model in galleries_by[key]:
                    continue
                scores = scores_cache.setdefault(run.run_dir, run.scores())
                mine = [s for s in scores if s["category"] == category and s["label"] in (0, 1)]
                threshold = threshold_for(
                    run.threshold(category), [s["label"] for s in mine], [s["score"] for s in mine]
                )
                galleries_by[key][model] = GalleryColumn(model, index, threshold)
    colors = {m: color_of(i) for i, m in enumerate(data.models)}
    curve_parts, gallery_parts = [], []
    for n, key in enumerate(sorted(set(curves_by) | set(galleries_by))):
        dataset, setting, category = key
        heading = f"<h3>{esc(dataset)} ({esc(setting)}) / {esc(category)}</h3>"
        if key in curves_by:
            per_model = [(m, colors[m], curves_by[key][m][1]) for m in data.models if m in curves_by[key]]
            curve_parts.append(heading + curve_panels(per_model))
        if key in galleries_by:
            columns = [galleries_by[key][m] for m in data.models if m in galleries_by[key]]
            gallery_parts.append(heading + gallery_table(f"gallery-{n}", columns, side, max_rows))
    seeds_note = '<p class="note">Curves and maps of each method\'s first seed.</p>'
    return (
        seeds_note + "".join(curve_parts)
        if curve_parts
        else '<p class="note">No curve data in the runs.</p>',
        seeds_note + "".join(gallery_parts)
        if gallery_parts
        else '<p class="note">No gallery maps in the runs.</p>',
    )


# ------------------------------------------------------------------------------ speed & runs
def _mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt_number(values[0], digits)
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def speed_section(data: GridData) -> str:
    """Per method: test images/s, peak CPU and CUDA memory, fit and test wall time.

    Args:
        data: the prepared grid data.
    """
    rows = []
    for model in data.models:
        runs = [r for r in data.runs if r.model == model]
        stats = [r.test_stats for r in runs if r.test_stats is not None]
        devices = sorted({s.device_name or s.device for s in stats}) or ["-"]
        rss = [s.peak_rss_bytes for s in stats if s.peak_rss_bytes is not None]
        cuda = [s.peak_cuda_allocated_bytes for s in stats if s.peak_cuda_allocated_bytes is not None]
        rows.append(
            [
                esc(model),
                str(len(runs)),
                esc(", ".join(devices)),
                _mean_std([s.images_per_s for s in stats if s.images_per_s is not None]),
                fmt_bytes(max(rss) if rss else None),
                fmt_bytes(max(cuda) if cuda else None),
                _mean_std([r.fit_s for r in runs if r.fit_s is not None], 0),
                _mean_std([r.test_s for r in runs if r.test_s is not None], 0),
            ]
        )
    note = (
        '<p class="note">images/s: test loop throughput (data, model, metric updates) from test_stats.json, '
        "mean ± std over runs; memory: the largest peak over runs; fit / test s: wall time of the stage "
        "subprocesses (cell_status.json).</p>"
    )
    return (
        table(
            ["method", "runs", "device", "test images/s", "peak CPU RSS", "peak CUDA", "fit s", "test s"],
            rows,
        )
        + note
    )


def _short_sha(sha: str | None) -> str:
    if not sha:
        return "-"
    return sha[:12] + (" (dirty)" if sha.endswith("-dirty") else "")


def runs_section(data: GridData, chosen: str) -> str:
    """Every run: link to its directory (and its own report), status, git SHA, versions, config.

    Args:
        data: the prepared grid data.
        chosen: the metric whose mean is shown per run.
    """
    rows = []
    for run in sorted(
        data.runs,
        key=lambda r: (
            data.models.index(r.model) if r.model in data.models else 0,
            r.dataset,
            r.category_label,
            r.seed or 0,
        ),
    ):
        name = run.cell_id or str(run.run_dir.name)
        link = f'<a href="{esc(relative_href(run.run_dir, data.report_file))}">{esc(name)}</a>'
        if (run.run_dir / "report.html").is_file():
            link += (
                f' · <a href="{esc(relative_href(run.run_dir / "report.html", data.report_file))}">report</a>'
            )
        info = run.run_info or {}
        versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
        version_text = ", ".join(f"{k} {versions[k]}" for k in VERSION_KEYS if versions.get(k))
        value = next((v for c, m, v in run.long if c.lower() == CATEGORY_MEAN and m == chosen), None)
        if value is None:
            values = [v for c, m, v in run.long if m == chosen]
            value = float(np.mean(values)) if values else None
        config = (
            details(run.config_name or "config", f"<pre>{esc(run.config_text)}</pre>")
            if run.config_text
            else "-"
        )
        rows.append(
            [
                link,
                esc(run.model),
                esc(run.dataset),
                esc(run.category_label),
                esc(run.seed),
                esc(run.status or "-"),
                esc(_short_sha(info.get("git_sha"))),
                esc(version_text or "-"),
                fmt_number(value, 4) if value is not None else "-",
                config,
            ]
        )
    return table(
        ["run", "method", "dataset", "category", "seed", "status", "git SHA", "versions", chosen, "config"],
        rows,
        name_columns=4,
    )


def failed_section(root: Path, report_file: Path) -> str:
    """The cells that failed (no metrics), with their error and a link to their directory.

    Args:
        root: the grid output folder.
        report_file: where the page will be written (links are relative to it).
    """
    rows = []
    for status in failed_cells(root):
        folder = Path(status["run_dir"])
        name = status.get("cell_id") or folder.name
        link = f'<a href="{esc(relative_href(folder, report_file))}">{esc(name)}</a>'
        rows.append([link, esc(status.get("error") or "-")])
    if not rows:
        return ""
    return "<h3>Failed cells</h3>" + table(
        ["cell", "error (see error.log in its directory)"], rows, name_columns=2
    )


def grid_page(
    runs: list[RunRecord],
    info: GridInfo,
    root: Path,
    report_file: Path,
    metric: str = "image_auroc",
    paper_path: str | Path | None = None,
    side: int = 96,
    max_gallery_rows: int = 12,
) -> str:
    """The whole HTML of a grid's report.

    Args:
        runs: the runs found below ``root``.
        info: what the grid says about its models and datasets.
        root: the folder the report is about.
        report_file: where the page will be written (links are relative to it).
        metric: the metric the tables show first.
        paper_path: the papers' table (default ``benchmarks/paper_results.csv``).
        side: long side of gallery pictures in pixels.
        max_gallery_rows: the most gallery images per category.
    """
    notes: list[str] = []
    data = _prepare(runs, info, report_file, paper_path, notes)
    curves_html, gallery_html = curves_and_gallery(data, side, max_gallery_rows)
    results_html = results_section(data, metric) + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    name = info.name or root.resolve().name
    meta = (
        f"{len(runs)} runs, {len(data.models)} methods · {root} · "
        f"grid facts: {info.source or 'none found'} · "
        f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    sections = [
        ("results", "Results", results_html),
        ("curves", "Curves", curves_html),
        ("gallery", "Gallery", gallery_html),
        ("speed", "Speed and memory", speed_section(data)),
        (
            "runs",
            "Runs, configs and versions",
            runs_section(data, metric) + failed_section(root, report_file),
        ),
    ]
    return page(f"Benchmark report: {name}", meta, sections)
