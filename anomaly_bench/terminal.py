"""What ``anomaly-bench`` prints: a quiet terminal and one readable result table.

``quiet_terminal()`` filters, only while the CLI runs, Lightning's product tips and warnings that are
harmless by design here (a frozen backbone *is* in eval mode). A user's own code that calls the
Python API is never filtered.

``print_metrics_table(run_dir)`` prints ``metrics.csv`` with one row per metric and one column per
category, so full metric names fit any terminal width: the categories are split over several
tables when the terminal is narrow. Counts print as whole numbers, scores with four decimals.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

TIP_MARKER = "Tip:"
# messages that say nothing about the user's run (matched from the start of the message)
HARMLESS_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",  # frozen backbones are in eval mode on purpose
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own call into torch
    r"Total length of .* across ranks is zero",  # predict/validation loaders on one process
    r"The '(train|val|test|predict)_dataloader' does not have many workers",  # CPU demos use 0 workers
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Experiment logs directory .* exists and is not empty",  # RunCSVLogger keeps the file on purpose
    r"Checkpoint directory .* exists and is not empty",  # resuming writes into the same run
    r"LightningCLI's args parameter is intended to run from within Python",  # we pass the prepared argv
    r"`LightningModule.configure_optimizers` returned `None`",  # memory-bank methods (PatchCore) train no weights
)
# Lightning's info lines that describe our own defaults, not the user's run
HARMLESS_INFO = (
    TIP_MARKER,
    "returned in `LightningModule.configure_callbacks` will override existing callbacks",
)
COUNT_COLUMNS = ("num_images", "num_anomalous", "num_normal")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in HARMLESS_INFO)


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    """Filter Lightning's tips and the known harmless warnings while the CLI runs."""
    tips = _DropTips()
    lightning_loggers = [logging.getLogger(name) for name in
                         ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                          "lightning.pytorch", "lightning_utilities.core.rank_zero")]
    for lg in lightning_loggers:
        lg.addFilter(tips)
    with warnings.catch_warnings():
        for pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg in lightning_loggers:
                lg.removeFilter(tips)


def _format(column: str, value: object) -> str:
    if value in ("", None):
        return "-"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if column in COUNT_COLUMNS or column.startswith("num_"):
        return str(int(round(number)))
    return f"{number:.4f}"


def print_metrics_table(run_dir: Path, width: int | None = None) -> None:
    """Print a run's metrics (``read_tables``): metrics as rows, categories (then ``mean``) as columns."""
    from anomaly_bench.metrics.report import read_tables

    rows, meta = read_tables(run_dir)
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=width) if width else Console()
    width = console.width or shutil.get_terminal_size().columns
    metrics = [c for c in (meta.get("columns") or list(rows[0])) if c != "category"]
    name_width = max(len(m) for m in metrics)
    categories = [r["category"] for r in rows]
    by_category = {r["category"]: r for r in rows}
    # every column must show a whole category name and a formatted value
    column_width = max(9, *(len(c) for c in categories)) + 3
    per_table = max(1, (width - name_width - 4) // column_width)
    console.print(f"metrics: {Path(run_dir) / 'metrics.json'}", soft_wrap=True)
    title = None
    for start in range(0, len(categories), per_table):
        chunk = categories[start:start + per_table]
        table = Table(title=title, title_justify="left")
        table.add_column("metric", no_wrap=True, min_width=name_width)
        for category in chunk:
            table.add_column(category, justify="right", no_wrap=True, style="bold" if category == "mean" else None)
        for metric in metrics:
            table.add_row(metric, *[_format(metric, by_category[c].get(metric, "")) for c in chunk])
        console.print(table)


def strip_ansi(text: str) -> str:
    """Terminal output without colour codes (for tests and logs)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
