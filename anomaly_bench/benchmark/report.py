"""Write and print the benchmark report: CSV for machines, Markdown for humans, rich for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from anomaly_bench.benchmark.aggregate import (
    dataset_mean,
    format_mean_std,
    metric_order,
    per_category_pivot,
    ranks,
    seed_stats,
    summary_table,
    to_percent,
)
from anomaly_bench.benchmark.grid import GridConfig
from anomaly_bench.benchmark.paper import PaperTableError, compare_with_paper, load_paper_results, paper_names
from anomaly_bench.benchmark.runner import CellResult
from anomaly_bench.report.grid_info import REFERENCE_METHOD, dataset_is_synthetic, grid_info_from_config

SHORT_METRIC = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1": "I-F1",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_aupro": "P-PRO",
    "pixel_f1": "P-F1",
}


@dataclass
class Report:
    long: pd.DataFrame
    per_category: pd.DataFrame
    dataset_means: pd.DataFrame
    stats: pd.DataFrame
    summary: pd.DataFrame
    ranks: pd.DataFrame
    paper: pd.DataFrame
    cells: pd.DataFrame
    # model name -> paper method name (``PatchCore`` marks the reference row)
    methods: dict[str, str] = field(default_factory=dict)
    # the grid's model order (the terminal tables put the reference method first, then this order)
    model_order: list[str] = field(default_factory=list)
    # datasets the grid marks synthetic: no comparison with the papers' numbers for them
    synthetic_datasets: list[str] = field(default_factory=list)


def build_report(grid: GridConfig, long: pd.DataFrame, cell_results: Sequence[CellResult] = (),
                 paper_path: str | Path | None = None) -> Report:
    pct = to_percent(long)
    per_seed = dataset_mean(pct)
    stats = seed_stats(per_seed)
    cat_stats = seed_stats(pct[pct["category"] != "mean"], by=["model", "dataset", "setting", "category", "metric"])
    both = pd.concat([cat_stats, stats.assign(category="mean")], ignore_index=True)
    models, datasets = paper_names(grid)
    synthetic = synthetic_datasets(grid)
    real = both[~both["dataset"].isin(synthetic)] if not both.empty else both
    try:
        paper = load_paper_results(paper_path)
        comparison = compare_with_paper(real, paper, models, datasets) if not real.empty else pd.DataFrame()
    except PaperTableError as err:
        print(f"warning: no paper comparison: {err}")
        comparison = pd.DataFrame()
    cells = pd.DataFrame([{**r.tags, **{k: v for k, v in asdict(r).items() if k != "tags"}} for r in cell_results])
    return Report(
        long=long,
        per_category=per_category_pivot(pct),
        dataset_means=per_seed,
        stats=stats,
        summary=summary_table(stats),
        ranks=ranks(stats),
        paper=comparison,
        cells=cells,
        methods=models,
        model_order=[m.name for m in grid.models],
        synthetic_datasets=synthetic,
    )


def synthetic_datasets(grid: GridConfig) -> list[str]:
    """The grid's datasets that are synthetic stand-ins (``synthetic: true``, a root written by the
    grid's ``synth:`` section, or a root holding the synthetic writer's marker): the same rule as the
    HTML report (``anomaly_bench.report.grid_info``).

    Args:
        grid: the benchmark grid.
    """
    info = grid_info_from_config(grid)
    return [d.name for d in grid.datasets if dataset_is_synthetic(info, d.name, ())]


def reference_model(models: Sequence[str], methods: dict[str, str]) -> str | None:
    """The grid's model that runs the reference method (PatchCore), by name or paper method.

    Args:
        models: model names of the grid.
        methods: model name -> paper method name.
    """
    for name in models:
        if REFERENCE_METHOD.lower() in (name.lower(), methods.get(name, "").lower()):
            return name
    return None


def ordered_models(present: Sequence[str], report: Report) -> list[str]:
    """The reference model first, then the grid's order, then any other model by name.

    Args:
        present: model names that have rows.
        report: the report (its grid order and method names).
    """
    reference = reference_model(list(present), report.methods)
    order = {name: i for i, name in enumerate(report.model_order)}
    return sorted(dict.fromkeys(present),
                  key=lambda m: (m != reference, order.get(m, len(order)), m))


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-style table without extra dependencies (pandas' to_markdown needs tabulate)."""
    if df.empty:
        return "_(no rows)_\n"

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}f}"
        return str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


def write_report(report: Report, out_dir: Path, grid_name: str) -> Path:
    """Every table as CSV and Markdown, plus one combined ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "results_long": report.long,
        "per_category": report.per_category,
        "dataset_mean_per_seed": report.dataset_means,
        "summary": report.summary,
        "seed_stats": report.stats,
        "ranks": report.ranks,
        "paper_comparison": report.paper,
        "cells": report.cells,
    }
    sections = [f"# Benchmark report: {grid_name}\n",
                "Rate metrics in percent. `mean ± std` over seeds (sample std).\n"]
    titles = {
        "summary": "Dataset means (class average), mean ± std over seeds",
        "paper_comparison": "Ours vs. the papers (diff = ours - paper)",
        "ranks": "Rank per metric (1 = best)",
        "per_category": "Per category (mean over seeds)",
        "cells": "Cells",
    }
    for name, df in tables.items():
        df.to_csv(out_dir / f"{name}.csv", index=False)
        md = to_markdown(df)
        (out_dir / f"{name}.md").write_text(md)
        if name in titles:
            sections.append(f"## {titles[name]}\n\n{md}")
    path = out_dir / "report.md"
    path.write_text("\n".join(sections))
    return path


CORE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")


def _difference(means: dict[tuple[str, str], float], model: str, reference: str | None, metric: str) -> str:
    """``model`` minus the reference's mean of ``metric``, signed, in the table's units ("" for the
    reference itself, "-" where either value is missing)."""
    if reference is None or model == reference:
        return ""
    ours, ref = means.get((model, metric)), means.get((reference, metric))
    if ours is None or ref is None or pd.isna(ours) or pd.isna(ref):
        return "-"
    return f"{ours - ref:+.1f}"


def _short(metric: str) -> str:
    if metric in SHORT_METRIC:
        return SHORT_METRIC[metric]
    return metric.replace("image_", "I-").replace("pixel_", "P-")


DIFF_METRICS = ("image_auroc", "pixel_auroc")


def print_report(report: Report, console: Console | None = None) -> None:
    """Compact terminal view that fits 80 columns: per dataset the core metrics (models x metrics)
    with the reference method (PatchCore) first and each model's difference to it in image and pixel
    AUROC, then ours vs. paper on class averages of real datasets (never of synthetic stand-ins).
    Every metric is in the CSV / Markdown files.

    Args:
        report: the report from ``build_report``.
        console: where to print (a new rich console by default).
    """
    console = console or Console()
    if report.stats.empty:
        console.print("[yellow]No finished cells with metrics yet.[/yellow]")
    for (dataset, setting), group in report.stats.groupby(["dataset", "setting"]):
        present = set(group["metric"])
        metrics = [m for m in CORE_METRICS if m in present] or sorted(present, key=metric_order)[:5]
        seeds = int(group["n_seeds"].max())
        models = ordered_models(list(group["model"]), report)
        reference = reference_model(models, report.methods)
        means = {(r.model, r.metric): r.mean for r in group.itertuples()}
        diffs = [m for m in DIFF_METRICS if m in present] if reference is not None else []
        title = f"{dataset} ({setting}), class average" + (f", mean ± std over {seeds} seeds" if seeds > 1 else "")
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("model", no_wrap=True)
        for metric in metrics:
            table.add_column(_short(metric), justify="right", no_wrap=True)
        for metric in diffs:
            table.add_column(f"Δ{_short(metric).split('-')[0]}", justify="right", no_wrap=True)
        for model in models:
            rows = group[group["model"] == model]
            by_metric = {r.metric: format_mean_std(r.mean, r.std, r.n_seeds) for r in rows.itertuples()}
            label = f"{model} (ref)" if model == reference else str(model)
            table.add_row(label, *[by_metric.get(m, "-") for m in metrics],
                          *[_difference(means, model, reference, m) for m in diffs])
        console.print(table)
        if diffs:
            console.print(f"[dim]ΔI / ΔP: image / pixel AUROC minus the reference row ({reference}).[/dim]")
        if dataset in report.synthetic_datasets:
            console.print(f"[dim]{dataset} is synthetic: no comparison with the papers' numbers.[/dim]")
    paper = report.paper
    if not paper.empty:
        means = paper[(paper["category"] == "mean") & paper["metric"].isin(CORE_METRICS)]
        for (dataset, setting), group in means.groupby(["dataset", "setting"]):
            table = Table(title=f"{dataset} ({setting}): ours vs. paper", title_justify="left", box=box.SIMPLE_HEAD,
                          pad_edge=False)
            for col in ("model", "metric", "ours", "paper", "diff", "source"):
                table.add_column(col, justify="right" if col in ("ours", "paper", "diff") else "left", no_wrap=True)
            for r in group.itertuples():
                source = str(r.paper_source).split(";")[0]
                table.add_row(str(r.model), _short(r.metric), format_mean_std(r.ours, r.ours_std, r.n_seeds),
                              f"{r.paper:.1f}", f"{r.diff:+.1f}", source)
            console.print(table)
    if not report.cells.empty and "status" in report.cells:
        failed = report.cells[report.cells["status"] == "failed"]
        for r in failed.itertuples():
            console.print(f"[red]failed[/red] {r.cell_id}: {r.error}\n  see {Path(r.run_dir) / 'error.log'}")
