"""Run the cells of a grid: skip finished ones, hand the rest to a launcher, follow their progress.

What a cell does (lease, ``fit`` resuming from ``last.ckpt``, ``test``, done marker) is in
``cell_runner.py``; where it runs is the launcher's choice (``launchers.py``: this machine's GPUs
or CPU, or a Ray cluster); the live table and ``status.json`` are ``status.py``. Every cell of the
grid gets exactly one ``CellResult`` per run.

The command that runs a stage is injectable (``command_builder``) so tests can exercise the
scheduling, skipping, resuming and failure handling without training a model.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from anomaly_bench.benchmark.cell_config import cell_tags
from anomaly_bench.benchmark.cell_runner import (
    CELL_CONFIG,
    ERROR_FILE,
    LOG_TAIL_LINES,
    STATUS_FILE,
    CellJob,
    CellResult,
    CommandBuilder,
    cell_dir,
    default_command,
    find_checkpoint,
    find_metrics_json,
    is_cell_done,
    read_cell_status,
    run_cell,
    skipped_result,
)
from anomaly_bench.benchmark.grid import Cell, GridConfig
from anomaly_bench.benchmark.launchers import LauncherError, LocalLauncher, resolve_slots
from anomaly_bench.benchmark.stage import ACTIVE, DEFAULT_GRACE_S, KILL_NOW, StopRequest
from anomaly_bench.benchmark.status import StatusBoard

__all__ = [
    "CELL_CONFIG", "ERROR_FILE", "LOG_TAIL_LINES", "STATUS_FILE", "CellResult", "CommandBuilder",
    "GridRunner", "default_command", "find_checkpoint", "find_metrics_json", "is_cell_done",
    "read_cell_status", "resolve_slots",
]


def absolute_grid(grid: GridConfig, cwd: Path) -> GridConfig:
    """The grid with ``output_dir`` and model config files as absolute paths, so a runner on another
    node (whose working directory differs) finds them.

    Args:
        grid: The grid as parsed (paths relative to ``cwd``).
        cwd: The folder relative paths start from.
    """
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else cwd / path

    models = tuple(replace(m, config=absolute(m.config)) if m.config is not None else m for m in grid.models)
    return replace(grid, output_dir=absolute(Path(grid.output_dir)), models=models)


class GridRunner:
    """Runs a grid's cells with a launcher, skipping finished ones and carrying on past failures.

    Args:
        grid: The grid.
        cells: The cells to run (all of the grid's, or a selection).
        command_builder: Builds a stage's argv (default: the real CLI).
        rerun: Run finished cells again.
        max_parallel: Local launcher: cells at once (default: one per GPU, 1 on CPU).
        log: Where progress lines go.
        cwd: Working directory of the stages (default: the current one).
        launcher: ``local`` or ``ray`` (default: the grid's ``launcher``).
        ray_address: Ray cluster address (default: the grid's ``ray.address``; none starts Ray locally).
        live: Show a live table (default: when stdout is a terminal).
        grace_s: Seconds a stopped stage gets to exit before it is killed.
    """

    def __init__(
        self,
        grid: GridConfig,
        cells: Sequence[Cell],
        command_builder: CommandBuilder = default_command,
        rerun: bool = False,
        max_parallel: int | None = None,
        log: Callable[[str], None] = print,
        cwd: Path | None = None,
        launcher: str | None = None,
        ray_address: str | None = None,
        live: bool | None = None,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        self.cwd = Path(cwd or Path.cwd()).absolute()
        self.grid = absolute_grid(grid, self.cwd)
        self.cells = list(cells)
        self.command_builder = command_builder
        self.rerun = rerun
        self.slots = resolve_slots(grid, max_parallel)
        self.log = log
        self.launcher_name = launcher or grid.launcher
        self.ray_address = ray_address
        self.live = live
        self.grace_s = grace_s
        self.stop = StopRequest()
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.launcher = make_launcher(self.launcher_name, self.grid, self.slots, ray_address, log)

    def run_dir(self, cell: Cell) -> Path:
        return cell_dir(self.grid, cell)

    def job(self, cell: Cell, slot: int | None = None) -> CellJob:
        return CellJob(grid=self.grid, cell=cell, run_id=self.run_id, cwd=str(self.cwd),
                       command_builder=self.command_builder, rerun=self.rerun, gpu=slot,
                       cpu_only=self.grid.devices == "cpu", grace_s=self.grace_s)

    def run_cell(self, cell: Cell, slot: int | None = None) -> CellResult:
        """Run one cell here and now (no launcher, no status board)."""
        return run_cell(self.job(cell, slot), stop=self.stop)

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the run: running stages get ``sig`` and a grace period, queued cells do not start.
        A second request kills the running stages at once.

        Args:
            sig: The signal the running stages receive.
        """
        if self.stop.is_set():
            ACTIVE.signal_all(KILL_NOW)
        self.stop.request(sig)

    @property
    def interrupted(self) -> bool:
        return self.stop.is_set()

    def run(self) -> list[CellResult]:
        """Run every cell; returns one result per cell, in the cells' order."""
        board = StatusBoard(self.grid, self.cells, self.run_id, self.launcher_name, self.log, self.live)
        results: dict[str, CellResult] = {}
        jobs: list[CellJob] = []
        with board:
            for cell in self.cells:
                if not self.rerun and is_cell_done(self.run_dir(cell)):
                    result = skipped_result(CellResult(cell.id, "skipped", str(self.run_dir(cell)),
                                                       tags=cell_tags(self.grid, cell)), self.run_dir(cell))
                    results[cell.id] = result
                    board.finish(result)
                else:
                    jobs.append(self.job(cell))
            for result in self.launcher.run(jobs, board.finish, self.stop):
                results[result.cell_id] = result
            board.close("interrupted" if self.stop.is_set() else "finished")
        return [results[c.id] for c in self.cells]


def make_launcher(name: str, grid: GridConfig, slots: Sequence[int | None], ray_address: str | None = None,
                  log: Callable[[str], None] = print):
    """The launcher called ``name``.

    Args:
        name: ``local`` or ``ray``.
        grid: The grid (its ``ray:`` section configures the ray launcher).
        slots: Local launcher: its execution slots.
        ray_address: Ray launcher: the cluster to join (default: the grid's ``ray.address``).
        log: Where progress lines go.
    """
    if name == "local":
        return LocalLauncher(slots)
    if name == "ray":
        from anomaly_bench.benchmark.ray_launcher import RayLauncher

        return RayLauncher(grid.ray, address=ray_address or grid.ray.address, log=log)
    raise LauncherError(f"unknown launcher {name!r}; expected local or ray")
