"""Launchers decide where each cell runs; what a cell does is ``cell_runner.run_cell`` either way.

- ``local`` (default): a thread pool on this machine, one cell per GPU (``CUDA_VISIBLE_DEVICES``
  pinned per cell), sequential on CPU unless ``max_parallel`` says otherwise.
- ``ray``: one Ray task per cell, anywhere in a Ray cluster (``ray_launcher.py``, imported only
  when asked for, so the package works without Ray).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from anomaly_bench.benchmark.cell_config import cell_tags
from anomaly_bench.benchmark.cell_runner import CellJob, CellResult, cell_dir, run_cell
from anomaly_bench.benchmark.grid import GridConfig
from anomaly_bench.benchmark.stage import StopRequest

Finish = Callable[[CellResult], None]


class LauncherError(RuntimeError):
    """The launcher cannot run the grid at all (Ray missing, storage not shared...): one line."""


def resolve_slots(grid: GridConfig, max_parallel: int | None = None) -> list[int | None]:
    """Execution slots: one GPU id per slot, or ``None`` for CPU. CPU runs sequentially unless the
    grid asks for ``max_parallel`` > 1 (training on CPU already uses every core)."""
    limit = max_parallel or grid.max_parallel
    if grid.devices == "cpu":
        gpus: list[int] = []
    elif grid.devices == "auto":
        gpus = list(range(_cuda_device_count()))
    else:
        gpus = list(grid.devices)  # type: ignore[arg-type]
    if not gpus:
        return [None] * (limit or 1)
    return gpus[: limit] if limit else gpus


def _cuda_device_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch missing or broken CUDA: run on CPU
        return 0


def unexpected_failure(job: CellJob, err: BaseException) -> CellResult:
    """A result for a cell whose runner itself raised (a bug or a storage error): the grid goes on.

    Args:
        job: The cell.
        err: What its runner raised.
    """
    return CellResult(job.cell.id, "failed", str(cell_dir(job.grid, job.cell)),
                      tags=cell_tags(job.grid, job.cell), error=f"runner error: {type(err).__name__}: {err}")


def not_started(job: CellJob) -> CellResult:
    """The result of a queued cell that a stop kept from starting."""
    return CellResult(job.cell.id, "interrupted", str(cell_dir(job.grid, job.cell)),
                      tags=cell_tags(job.grid, job.cell), error="not started: the run was stopped")


class LocalLauncher:
    """Cells in threads of this process, one per slot (a GPU id, or None for CPU).

    Args:
        slots: Execution slots from ``resolve_slots``.
    """

    name = "local"

    def __init__(self, slots: Sequence[int | None]) -> None:
        self.slots = list(slots)

    def describe(self) -> str:
        return "CPU" if all(s is None for s in self.slots) else f"GPUs {self.slots}"

    def run(self, jobs: Sequence[CellJob], finish: Finish, stop: StopRequest) -> list[CellResult]:
        """Run ``jobs``, at most one per slot at a time; one result per job, in order.

        Args:
            jobs: The cells to run.
            finish: Called with each cell's result as it ends (the status board).
            stop: When set, running cells are stopped and queued ones not started.
        """
        free: queue.Queue[int | None] = queue.Queue()
        for slot in self.slots:
            free.put(slot)

        def one(job: CellJob) -> CellResult:
            if stop.is_set():
                result = not_started(job)
            else:
                slot = free.get()
                try:
                    if stop.is_set():
                        result = not_started(job)
                    else:
                        result = run_cell(replace(job, gpu=slot), stop=stop)
                except Exception as err:
                    result = unexpected_failure(job, err)
                finally:
                    free.put(slot)
            finish(result)
            return result

        if len(self.slots) == 1:
            return [one(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="cell") as pool:
            return list(pool.map(one, jobs))
