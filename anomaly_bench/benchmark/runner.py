"""Run the cells of a grid: each cell is ``fit`` then ``test`` through the real CLI, in subprocesses.

A subprocess per stage isolates cells from each other: a crash, an OOM or a CUDA error kills one
cell, never the grid. Finished cells (their ``metrics.json`` exists) are skipped on re-runs. GPU
cells run in parallel, one per device, by pinning ``CUDA_VISIBLE_DEVICES`` for each subprocess.

The command that runs a stage is injectable (``command_builder``) so tests can exercise the
scheduling, skipping and failure handling without training a model.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anomaly_bench.benchmark.cell_config import build_cell_config, cell_tags, wandb_mode, write_cell_config
from anomaly_bench.benchmark.grid import Cell, GridConfig

CommandBuilder = Callable[[str, Path, Path, "Path | None"], list[str]]
"""(stage, cell_config_path, run_dir, checkpoint_or_None) -> argv of the subprocess."""

CELL_CONFIG = "cell_config.yaml"
STATUS_FILE = "cell_status.json"
ERROR_FILE = "error.log"
LOG_TAIL_LINES = 80


def default_command(stage: str, config_path: Path, run_dir: Path, ckpt_path: Path | None) -> list[str]:
    """The same path a user takes: ``python -m anomaly_bench.cli fit|test --config ...``."""
    cmd = [sys.executable, "-m", "anomaly_bench.cli", stage, "--config", str(config_path), "--run_dir", str(run_dir)]
    if stage == "test":
        cmd += ["--ckpt_path", str(ckpt_path) if ckpt_path is not None else "last"]
    return cmd


@dataclass
class CellResult:
    cell_id: str
    status: str  # done | skipped | failed
    run_dir: str
    device: str = "cpu"
    fit_s: float | None = None
    test_s: float | None = None
    error: str | None = None
    tags: dict = field(default_factory=dict)


def find_metrics_json(run_dir: Path) -> Path | None:
    """``metrics.json`` of a cell: at the top of the run dir, or the newest one below it."""
    top = run_dir / "metrics.json"
    if top.is_file():
        return top
    found = [p for p in run_dir.rglob("metrics.json") if p.is_file()] if run_dir.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``test`` should load: ``last.ckpt`` if saved, else the newest ``*.ckpt``."""
    if not run_dir.is_dir():
        return None
    lasts = sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if lasts:
        return lasts[-1]
    ckpts = sorted(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


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


class GridRunner:
    """Runs cells, skipping finished ones, recording failures and carrying on."""

    def __init__(
        self,
        grid: GridConfig,
        cells: Sequence[Cell],
        command_builder: CommandBuilder = default_command,
        rerun: bool = False,
        max_parallel: int | None = None,
        log: Callable[[str], None] = print,
        cwd: Path | None = None,
    ) -> None:
        self.grid = grid
        self.cells = list(cells)
        self.command_builder = command_builder
        self.rerun = rerun
        self.slots = resolve_slots(grid, max_parallel)
        self.log = log
        self.cwd = Path(cwd or Path.cwd())

    def run_dir(self, cell: Cell) -> Path:
        return self.grid.output_dir / "cells" / cell.id

    def run(self) -> list[CellResult]:
        total = len(self.cells)
        free: queue.Queue[int | None] = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        counter = {"n": 0}
        lock = threading.Lock()

        def job(cell: Cell) -> CellResult:
            slot = free.get()
            try:
                result = self.run_cell(cell, slot)
            finally:
                free.put(slot)
            with lock:
                counter["n"] += 1
                self._report(counter["n"], total, result)
            return result

        if len(self.slots) == 1:
            return [job(c) for c in self.cells]
        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            return list(pool.map(job, self.cells))

    def _report(self, i: int, total: int, r: CellResult) -> None:
        times = ""
        if r.fit_s is not None:
            times = f" (fit {r.fit_s:.0f}s, test {r.test_s or 0:.0f}s)"
        msg = f"[{i}/{total}] {r.cell_id}: {r.status}{times}"
        if r.status == "failed":
            msg += f" -> {r.error}; log: {Path(r.run_dir) / ERROR_FILE}"
        self.log(msg)

    def run_cell(self, cell: Cell, slot: int | None = None) -> CellResult:
        run_dir = self.run_dir(cell)
        device = "cpu" if slot is None else f"cuda:{slot}"
        tags = cell_tags(self.grid, cell)
        if not self.rerun and find_metrics_json(run_dir) is not None:
            return CellResult(cell.id, "skipped", str(run_dir), device=device, tags=tags)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        if self.rerun:
            for old in run_dir.rglob("metrics.json"):
                old.unlink()
        result = CellResult(cell.id, "failed", str(run_dir), device=device, tags=tags)
        try:
            config = build_cell_config(self.grid, cell, run_dir)
            if self.grid.devices == "cpu":
                config["trainer"]["accelerator"] = "cpu"
            config_path = write_cell_config(config, run_dir / CELL_CONFIG)
        except Exception as err:  # bad model config etc.: this cell fails, the grid goes on
            return self._fail(result, "config", f"{type(err).__name__}: {err}", "")
        env = self._env(slot)

        ok, seconds, detail = self._stage("fit", config_path, run_dir, None, env)
        result.fit_s = seconds
        if not ok:
            return self._fail(result, "fit", detail, self._tail(run_dir / "fit.log"))
        ckpt = find_checkpoint(run_dir)
        ok, seconds, detail = self._stage("test", config_path, run_dir, ckpt, env)
        result.test_s = seconds
        if not ok:
            return self._fail(result, "test", detail, self._tail(run_dir / "test.log"))
        if find_metrics_json(run_dir) is None:
            return self._fail(result, "test", "test finished but wrote no metrics.json", self._tail(run_dir / "test.log"))
        result.status = "done"
        self._write_status(result)
        return result

    def _env(self, slot: int | None) -> dict[str, str]:
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        elif self.grid.devices == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        # users' own class paths in the current project must import in the subprocess
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.cwd), env.get("PYTHONPATH", "")) if p)
        if self.grid.wandb is not None:
            env["WANDB_MODE"] = wandb_mode(self.grid.wandb)
            env.setdefault("WANDB_SILENT", "true")
        return env

    def _stage(self, stage: str, config_path: Path, run_dir: Path, ckpt: Path | None,
               env: dict[str, str]) -> tuple[bool, float, str]:
        cmd = self.command_builder(stage, config_path, run_dir, ckpt)
        log_path = run_dir / f"{stage}.log"
        start = time.perf_counter()
        with open(log_path, "w") as log_file:
            log_file.write("$ " + " ".join(map(str, cmd)) + "\n")
            log_file.flush()
            try:
                proc = subprocess.run(
                    [str(c) for c in cmd], stdout=log_file, stderr=subprocess.STDOUT, env=env,
                    cwd=self.cwd, timeout=self.grid.timeout_s, check=False,
                )
            except subprocess.TimeoutExpired:
                return False, time.perf_counter() - start, f"{stage} timed out after {self.grid.timeout_s:.0f}s"
            except OSError as err:
                return False, time.perf_counter() - start, f"{stage} could not start: {err}"
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return False, seconds, f"{stage} exited with code {proc.returncode}"
        return True, seconds, ""

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _fail(self, result: CellResult, stage: str, detail: str, tail: str) -> CellResult:
        result.status = "failed"
        result.error = detail
        run_dir = Path(result.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(f"cell {result.cell_id} failed at stage '{stage}': {detail}\n\n{tail}\n")
        self._write_status(result)
        return result

    @staticmethod
    def _write_status(result: CellResult) -> None:
        path = Path(result.run_dir) / STATUS_FILE
        path.write_text(json.dumps(asdict(result), indent=2))


def read_cell_status(run_dir: Path) -> dict | None:
    path = run_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
