"""``build_report(path)`` and ``anomaly-bench report PATH``: one self-contained ``report.html``.

PATH is a run directory (it holds ``metrics.json``) or any folder with runs below it (a grid's
output folder, a ``results/`` tree, a copy from a cluster). The page needs nothing else: charts
are inline SVG, pictures are inline JPEG, styles and script are inline, and the page's
Content-Security-Policy forbids loading anything from anywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_bench.atomic import atomic_write_text
from anomaly_bench.report.collect import ReportInputError, collect_runs, is_run_dir, read_run
from anomaly_bench.report.grid_info import GridInfo, grid_info_from_config, read_grid_info
from anomaly_bench.report.grid_page import grid_page
from anomaly_bench.report.run_page import run_page

REPORT_FILE = "report.html"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_SIDE = 96
DEFAULT_GALLERY_ROWS = 12


def _render(
    path: Path,
    output: Path,
    metric: str,
    info: GridInfo | None,
    paper_path: str | Path | None,
    side: int,
    rows: int,
) -> str:
    if is_run_dir(path):
        return run_page(read_run(path), output, side, rows)
    runs = collect_runs(path)
    if not runs:
        raise ReportInputError(
            f"{path}: no run below it (no folder holding metrics.json); "
            "give a run directory or a grid's output folder"
        )
    _check_metric(metric, runs)
    return grid_page(runs, info or read_grid_info(path), path, output, metric, paper_path, side, rows)


def _check_metric(metric: str, runs: Sequence[Any]) -> None:
    """``metric`` must be a column of some run's metrics table (a typo would give empty tables)."""
    import difflib

    known = sorted({key for run in runs for row in (run.metrics.get("rows") or []) if isinstance(row, dict)
                    for key, value in row.items() if key != "category" and not isinstance(value, str)})
    if known and metric not in known:
        close = difflib.get_close_matches(metric, known, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ReportInputError(f"--metric {metric!r} is not in these runs' metrics; {hint}known: {', '.join(known)}")


def build_report(
    path: str | Path,
    output: str | Path | None = None,
    metric: str = "image_auroc",
    grid: Any = None,
    paper_path: str | Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    side: int = DEFAULT_SIDE,
    max_gallery_rows: int = DEFAULT_GALLERY_ROWS,
) -> Path:
    """Write the report of a run directory or of a folder of runs; returns the file written.

    When the page would exceed ``max_bytes``, the gallery shows fewer images per category (halved
    until it fits or one image is left).

    Args:
        path: a run directory or a grid output folder.
        output: the HTML file (default ``<path>/report.html``).
        metric: the metric the grid tables show first (e.g. ``image_auroc``, ``pixel_aupro``).
        grid: the ``GridConfig`` the benchmark ran (default: ``<path>/grid.yaml`` when present).
        paper_path: the papers' table (default ``benchmarks/paper_results.csv``).
        max_bytes: the size the page should stay under.
        side: long side of each gallery picture in pixels.
        max_gallery_rows: the most gallery images per category.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(
            f"{path}: not a directory (expected a run directory or a grid's output folder)"
        )
    output = Path(output) if output is not None else path / REPORT_FILE
    info = grid_info_from_config(grid) if grid is not None else None
    rows = max(1, max_gallery_rows)
    text = _render(path, output, metric, info, paper_path, side, rows)
    while len(text.encode("utf-8")) > max_bytes and rows > 1:
        rows //= 2
        text = _render(path, output, metric, info, paper_path, side, rows)
    if len(text.encode("utf-8")) > max_bytes:
        print(
            f"warning: {output} is {len(text.encode('utf-8')) / 2**20:.1f} MiB, "
            f"above {max_bytes / 2**20:.1f} MiB",
            file=sys.stderr,
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    return output


def build_parser() -> argparse.ArgumentParser:
    """The ``anomaly-bench report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="anomaly-bench report",
        description="Write one self-contained report.html (no network needed to open it) for a run "
        "directory or a grid's output folder.",
    )
    parser.add_argument(
        "path", metavar="PATH", help="a run directory (holds metrics.json) or a folder with runs below it"
    )
    parser.add_argument("--output", default=None, help="the HTML file to write (default: PATH/report.html)")
    parser.add_argument(
        "--metric",
        default="image_auroc",
        help="metric the grid tables show first, e.g. image_auroc, pixel_aupro (default: image_auroc)",
    )
    parser.add_argument(
        "--paper_results", default=None, help="the papers' numbers (default: benchmarks/paper_results.csv)"
    )
    parser.add_argument(
        "--max_mb",
        type=float,
        default=DEFAULT_MAX_BYTES / 2**20,
        help="size the page should stay under; the gallery shrinks to fit (default: 10)",
    )
    return parser


def report_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomaly-bench report``; returns the exit status (2 on bad input).

    Args:
        argv: the arguments after ``report``.
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.max_mb > 0:
        parser.error(f"--max_mb must be a size above 0 MiB, got {args.max_mb:g}")
    if args.paper_results is not None and not Path(args.paper_results).is_file():
        parser.error(f"--paper_results {args.paper_results} does not exist (expected a CSV like "
                     "benchmarks/paper_results.csv)")
    try:
        path = build_report(
            args.path,
            args.output,
            args.metric,
            paper_path=args.paper_results,
            max_bytes=int(args.max_mb * 2**20),
        )
    except ReportInputError as err:
        print(f"anomaly-bench report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
