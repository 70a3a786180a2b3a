"""Live progress of a grid: one status file a second terminal can follow, and a live table.

The runner (the driver) is the only writer of ``<output_dir>/status.json``, rewritten atomically on
every state change and every few seconds (``updated_at`` tells a follower the runner is alive).
Cells report ``running on <node>`` by writing their own ``cell_status.json`` (the cell runner does,
wherever it runs); the board polls those of the cells not yet finished, so the same mechanism
serves a local thread and a Ray task on another node.

``anomaly-bench benchmark --status G.yaml`` prints the table once; ``--follow`` keeps it live.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.benchmark.cell_runner import STATUS_FILE, CellResult, cell_dir
from anomaly_bench.benchmark.grid import Cell, GridConfig

GRID_STATUS_FILE = "status.json"
STATES = ("queued", "running", "done", "failed", "skipped", "interrupted", "busy")
FINAL = ("done", "failed", "skipped", "interrupted", "busy")
STYLE = {"running": "cyan", "done": "green", "failed": "red", "skipped": "dim", "interrupted": "yellow",
         "busy": "yellow", "queued": "white"}
HEARTBEAT_S = 5.0
HEADLINE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")


@dataclass
class CellState:
    id: str
    state: str = "queued"
    node: str | None = None
    attempt: int = 0
    stage: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    metric: str | None = None
    value: float | None = None
    error: str | None = None
    run_dir: str | None = None


def headline_metric(run_dir: Path) -> tuple[str, float] | None:
    """The first of ``HEADLINE_METRICS`` the cell reports, as its class average (for live tables)."""
    try:
        # imported here: results imports runner, which imports this module
        from anomaly_bench.benchmark.results import MEAN_LABELS, read_cell_metrics

        rows = read_cell_metrics(run_dir)
    except Exception:  # a table must not fail a cell
        return None
    for name in HEADLINE_METRICS:
        values = [(c.strip().lower(), v) for c, m, v in rows if m == name]
        means = [v for c, v in values if c in MEAN_LABELS]
        if means:
            return name, float(means[0])
        if values:
            return name, sum(v for _, v in values) / len(values)
    return None


def grid_status_path(grid: GridConfig) -> Path:
    return Path(grid.output_dir) / GRID_STATUS_FILE


class StatusBoard:
    """Cell states of one run of a grid: kept in memory, written to ``status.json``, shown live.

    Args:
        grid: The grid.
        cells: Its cells in this run.
        run_id: The run's id (cells' status files from other runs are ignored).
        launcher: ``local`` or ``ray``, recorded in the status file.
        log: Where plain progress lines go (used when the live table is off).
        live: Show a rich live table (default: when stdout is a terminal).
        poll_s: Seconds between polls of the running cells' status files.
    """

    def __init__(self, grid: GridConfig, cells: Sequence[Cell], run_id: str, launcher: str = "local",
                 log: Callable[[str], None] = print, live: bool | None = None, poll_s: float = 1.0) -> None:
        self.grid, self.run_id, self.launcher, self.log = grid, run_id, launcher, log
        self.path = grid_status_path(grid)
        self.cells = {c.id: CellState(c.id, run_dir=str(cell_dir(grid, c))) for c in cells}
        self.total = len(self.cells)
        self.poll_s = poll_s
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self.started_at = time.time()
        self.outcome: str | None = None
        self._finished_count = 0
        self._lock = threading.Lock()
        self._changed = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._mtimes: dict[str, float] = {}
        self._written_at = 0.0

    # ------------------------------------------------------------------------------ events
    def finish(self, result: CellResult) -> None:
        """Record a cell's final state (called once per cell by the launcher); a finished cell's
        headline metric is read here, in the driver, so that runners on other nodes stay light.

        Args:
            result: How the cell ended; its ``metric`` and ``value`` are filled in when found.
        """
        if result.status in ("done", "skipped") and result.metric is None:
            found = headline_metric(Path(result.run_dir))
            if found:
                result.metric, result.value = found
        with self._lock:
            state = self.cells[result.cell_id]
            state.state, state.error = result.status, result.error
            state.node = result.node or state.node
            state.attempt = result.attempts or state.attempt
            state.metric, state.value = result.metric, result.value
            state.stage = None
            state.finished_at = time.time()
            if state.started_at is None and result.status != "skipped":
                state.started_at = state.finished_at - (result.fit_s or 0) - (result.test_s or 0)
            self._finished_count += 1
            self._changed = True
            line = self._result_line(self._finished_count, result)
        self._print(line)

    def _result_line(self, i: int, r: CellResult) -> str:
        times = f" (fit {r.fit_s:.0f}s, test {r.test_s or 0:.0f}s)" if r.fit_s is not None else ""
        where = f" on {r.node}" if r.node and r.status not in ("skipped",) else ""
        metric = f" {r.metric}={r.value:.4f}" if r.metric and r.value is not None else ""
        msg = f"[{i}/{self.total}] {r.cell_id}: {r.status}{where}{times}{metric}"
        if r.status in ("failed", "busy", "interrupted") and r.error:
            msg += f" -> {r.error}"
        if r.status == "failed":
            msg += f"; log: {Path(r.run_dir) / 'error.log'}"
        return msg

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            self.log(line)

    def poll(self) -> None:
        """Pick up ``running`` states (node, stage, attempt) from unfinished cells' status files."""
        lines = []
        with self._lock:
            pending = [s for s in self.cells.values() if s.state in ("queued", "running")]
        for state in pending:
            path = Path(state.run_dir or "") / STATUS_FILE
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if self._mtimes.get(state.id) == mtime:
                continue
            self._mtimes[state.id] = mtime
            try:
                cell = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if cell.get("run_id") != self.run_id or cell.get("status") != "running":
                continue
            with self._lock:
                if state.state not in ("queued", "running"):
                    continue
                moved = (state.state, state.node, state.attempt) != ("running", cell.get("node"),
                                                                       cell.get("attempt"))
                state.state, state.node = "running", cell.get("node")
                state.attempt, state.stage = int(cell.get("attempt") or 1), cell.get("stage")
                state.started_at = state.started_at or cell.get("started_at")
                self._changed = True
            if moved:
                again = f", attempt {state.attempt}" if state.attempt > 1 else ""
                lines.append(f"  {state.id}: running on {state.node}{again}")
        if not self.live_enabled:
            for line in lines:
                self._print(line)

    # ------------------------------------------------------------------------------ output
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            cells = [asdict(s) for s in self.cells.values()]
        counts = {state: sum(c["state"] == state for c in cells) for state in STATES}
        return {"grid": self.grid.name, "launcher": self.launcher, "run_id": self.run_id,
                "runner": {"host": socket.gethostname(), "pid": os.getpid()}, "started_at": self.started_at,
                "updated_at": time.time(), "finished": self.outcome is not None, "outcome": self.outcome,
                "counts": counts, "cells": cells}

    def write(self, force: bool = False) -> None:
        with self._lock:
            due = self._changed or force or time.time() - self._written_at > HEARTBEAT_S
            self._changed = False
        if due:
            atomic_write_json(self.path, self.snapshot(), fsync=False)
            self._written_at = time.time()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
                self.write()
                if self._live is not None:
                    self._live.update(render(self.snapshot()))
            except OSError:  # a storage hiccup must not stop the run; the next tick retries
                continue

    def __enter__(self) -> StatusBoard:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write(force=True)
        if self.live_enabled:
            self._live = Live(render(self.snapshot()), refresh_per_second=2, transient=False)
            self._live.start()
        self._thread = threading.Thread(target=self._loop, name="status-board", daemon=True)
        self._thread.start()
        return self

    def close(self, outcome: str) -> None:
        """Stop polling and write the final status.

        Args:
            outcome: ``finished``, ``interrupted`` or ``error``.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.outcome = outcome
        self.write(force=True)
        if self._live is not None:
            self._live.update(render(self.snapshot()))
            self._live.stop()
            if not self._live.console.is_terminal:
                self._live.console.line()  # a non-terminal Live ends without a newline
            self._live = None

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.outcome is None:
            self.close("error" if exc_type is not None else "finished")


# ---------------------------------------------------------------------------------- rendering
def _elapsed(cell: dict[str, Any], now: float) -> str:
    start = cell.get("started_at")
    if not start:
        return ""
    end = cell.get("finished_at") or now
    seconds = max(0.0, end - start)
    return f"{seconds / 60:.0f}m{seconds % 60:02.0f}s" if seconds >= 60 else f"{seconds:.0f}s"


def render(status: dict[str, Any], max_rows: int | None = None) -> Group:
    """The status as a rich renderable: a summary line and one row per cell.

    Args:
        status: The content of a ``status.json``.
        max_rows: Most cell rows; beyond it, running and failed cells are shown first.
    """
    now = status.get("updated_at") if status.get("finished") else time.time()
    counts = status.get("counts", {})
    summary = ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s))
    seen = time.time() - float(status.get("updated_at") or 0)
    runner = status.get("runner") or {}
    state = "finished" if status.get("finished") else f"runner {runner.get('host')}:{runner.get('pid')}"
    if not status.get("finished") and seen > 3 * HEARTBEAT_S:
        state += f", not heard from for {seen:.0f}s"
    header = Text(f"{status.get('grid')} ({status.get('launcher')}, {state}): {summary}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("cell", "left"), ("state", "left"), ("where", "left"), ("attempt", "right"),
                          ("elapsed", "right"), ("metric", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    cells = list(status.get("cells", []))
    if max_rows is not None and len(cells) > max_rows:
        order = {"running": 0, "failed": 1, "busy": 2, "interrupted": 3, "queued": 4, "done": 5, "skipped": 6}
        cells = sorted(cells, key=lambda c: order.get(c["state"], 9))
        hidden, cells = len(cells) - max_rows, cells[:max_rows]
    else:
        hidden = 0
    for c in cells:
        where = c.get("node") or ""
        if c["state"] == "running" and c.get("stage"):
            where = f"{c['stage']} on {where}"
        metric = f"{c['metric']} {c['value']:.4f}" if c.get("metric") and c.get("value") is not None else ""
        table.add_row(c["id"], Text(c["state"], style=STYLE.get(c["state"], "")), where,
                      str(c.get("attempt") or ""), _elapsed(c, now or time.time()), metric)
    parts: list[Any] = [header, table]
    if hidden:
        parts.append(Text(f"... {hidden} more cells (done, queued or skipped)"))
    return Group(*parts)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        status = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def show_status(grid: GridConfig, follow: bool = False, console: Console | None = None,
                interval_s: float = 1.0) -> int:
    """Print a grid's status table (``--status``). Returns 0, or 2 when the grid has no status file yet.

    Args:
        grid: The grid (its ``output_dir`` holds ``status.json``).
        follow: Keep the table live until the run ends (or Ctrl-C).
        console: Where to print (default: a new rich console).
        interval_s: Seconds between reads of the status file when following.
    """
    console = console or Console()
    path = grid_status_path(grid)
    status = read_status(path)
    if status is None:
        console.print(f"no status file at {path}: this grid has not been started with this version yet",
                      markup=False)
        return 2
    rows = max(10, console.height - 8) if console.is_terminal else None
    if not follow or status.get("finished"):
        console.print(render(status, rows))
        return 0
    with Live(render(status, rows), console=console, refresh_per_second=2) as live:
        try:
            while not status.get("finished"):
                time.sleep(interval_s)
                status = read_status(path) or status
                live.update(render(status, rows))
        except KeyboardInterrupt:
            pass
    return 0
