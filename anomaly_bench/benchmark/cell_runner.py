"""What one cell does, wherever a launcher runs it: lease -> fit -> test -> done marker.

A cell is ``fit`` then ``test`` through the real CLI, each stage a guarded subprocess in its own
process group (``stage.py``): a crash, an OOM or a CUDA error fails one cell, never the grid, and a
stage never outlives its runner. Around the stages:

- **Lease.** The runner holds the cell's lease (``lease.py``) from the first check to the done
  marker, renewed by a heartbeat; a second runner waits, and a dead runner's lease expires (at once
  when it ran on this host), so a retry is never blocked for long.
- **Resume.** An interrupted cell resumes its fit from ``last.ckpt`` (``--ckpt_path last``) when the
  cell's config is unchanged, and skips the fit when it had already finished; a lost node or a
  killed runner costs at most the epoch in flight.
- **Done marker.** ``cell_status.json`` with ``status: done``, written atomically after ``test``
  exited 0 and left a ``metrics.json`` that parses: a half-written metrics file never counts as done.

The launchers (``launchers.py``) only decide where ``run_cell`` runs: a local thread or a Ray task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.atomic import atomic_write_json, atomic_write_text
from anomaly_bench.benchmark.cell_config import build_cell_config, cell_tags, wandb_mode, write_cell_config
from anomaly_bench.benchmark.grid import Cell, GridConfig
from anomaly_bench.benchmark.lease import CellLease
from anomaly_bench.benchmark.stage import DEFAULT_GRACE_S, StageOutcome, run_stage
from anomaly_bench.benchmark.storage import SharedStorageError, check_probe

CommandBuilder = Callable[[str, Path, Path, "Path | None"], list[str]]
"""(stage, cell_config_path, run_dir, checkpoint_or_None) -> argv of the subprocess."""

CELL_CONFIG = "cell_config.yaml"
STATUS_FILE = "cell_status.json"
ERROR_FILE = "error.log"
LOG_TAIL_LINES = 80


def default_command(stage: str, config_path: Path, run_dir: Path, ckpt_path: Path | None) -> list[str]:
    """The same path a user takes: ``python -m anomaly_bench.cli fit|test --config ... --run_dir ...``.

    Args:
        stage: ``fit`` or ``test``.
        config_path: The cell's config file.
        run_dir: The cell's run directory.
        ckpt_path: ``fit``: the checkpoint to resume from (``--ckpt_path last`` for the run's own
            ``last.ckpt``), None for a fresh fit; ``test``: the checkpoint to load (None: ``last``).
    """
    cmd = [sys.executable, "-m", "anomaly_bench.cli", stage, "--config", str(config_path), "--run_dir", str(run_dir)]
    if stage == "test":
        cmd += ["--ckpt_path", str(ckpt_path) if ckpt_path is not None else "last"]
    elif ckpt_path is not None:
        is_last = Path(ckpt_path) == Path(run_dir) / "checkpoints" / "last.ckpt"
        cmd += ["--ckpt_path", "last" if is_last else str(ckpt_path)]
    return cmd


@dataclass
class CellResult:
    """How a cell ended in this run: ``done``, ``skipped`` (finished earlier), ``failed``,
    ``interrupted`` (the run was stopped; it resumes next time) or ``busy`` (another runner holds it)."""

    cell_id: str
    status: str
    run_dir: str
    device: str = "cpu"
    fit_s: float | None = None
    test_s: float | None = None
    error: str | None = None
    tags: dict = field(default_factory=dict)
    node: str | None = None
    attempts: int = 0
    metric: str | None = None  # the headline metric's name and value, for tables (set by the driver)
    value: float | None = None


class CellInterrupted(RuntimeError):
    """The cell stopped for a reason outside it (its stage was killed, its lease lost): run it again,
    elsewhere if need be. Ray retries a task that raises this (``retry_exceptions``)."""


@dataclass(frozen=True)
class CellJob:
    """Everything a runner needs to run one cell, picklable so a Ray task can carry it.

    Args:
        grid: The grid (its ``output_dir`` absolute, so any node finds it).
        cell: The cell to run.
        run_id: Id of this ``benchmark`` invocation: ``--rerun`` resets a cell once per run, so a
            retry within the run resumes instead of starting over.
        cwd: Working directory of the stages (relative data roots and users' modules resolve there).
        command_builder: Builds a stage's argv (tests swap in a fake CLI).
        rerun: Run the cell again even when it is finished.
        gpu: The GPU this cell is pinned to (local launcher), or None.
        cpu_only: Hide every GPU from the stages and set ``trainer.accelerator: cpu``.
        retry_on_interrupt: Raise ``CellInterrupted`` instead of failing when the stage was killed from
            outside (Ray retries the task).
        storage_token: The driver's shared-storage probe token; checked before the cell starts.
        grace_s: Seconds a stopped stage gets before it is killed.
    """

    grid: GridConfig
    cell: Cell
    run_id: str
    cwd: str
    command_builder: CommandBuilder = default_command
    rerun: bool = False
    gpu: int | None = None
    cpu_only: bool = False
    retry_on_interrupt: bool = False
    storage_token: str | None = None
    grace_s: float = DEFAULT_GRACE_S


# ----------------------------------------------------------------------------------- cell files
def cell_dir(grid: GridConfig, cell: Cell) -> Path:
    return grid.output_dir / "cells" / cell.id


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


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` when it is a complete checkpoint (a zip archive with its end record: a save cut
    short by a crash is not), else None."""
    candidates = [run_dir / "checkpoints" / "last.ckpt"]
    if not candidates[0].is_file() and run_dir.is_dir():
        candidates = sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.is_file() and zipfile.is_zipfile(path):
                return path
    return None


def read_cell_status(run_dir: Path) -> dict | None:
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return status if isinstance(status, dict) else None


def metrics_complete(run_dir: Path) -> bool:
    """A ``metrics.json`` exists and parses (a file cut short by a crash does not)."""
    path = find_metrics_json(run_dir)
    if path is None:
        return False
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def is_cell_done(run_dir: Path) -> bool:
    """The done marker: the cell's status says ``done`` and its ``metrics.json`` is complete."""
    status = read_cell_status(run_dir)
    return bool(status) and status.get("status") == "done" and metrics_complete(run_dir)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_error_log(run_dir: Path, cell_id: str, stage: str, detail: str, tail: str) -> None:
    atomic_write_text(run_dir / ERROR_FILE, f"cell {cell_id} failed at stage '{stage}': {detail}\n\n{tail}\n")


def _config_sha(config: dict[str, Any]) -> str:
    """Fingerprint of what a checkpoint depends on; the logger is left out (its W&B mode is resolved
    per node, and a retry on another node must still resume)."""
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k != "logger"}
    text = yaml.safe_dump({**config, "trainer": trainer}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _reset_cell(run_dir: Path) -> None:
    """``--rerun``: forget a cell's results and checkpoints so it trains from scratch."""
    for pattern in ("metrics.json", "metrics.csv", "*.ckpt"):
        for path in run_dir.rglob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()
    for name in (STATUS_FILE, ERROR_FILE):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()


# ----------------------------------------------------------------------------------- the runner
def run_cell(job: CellJob, stop: threading.Event | None = None, node: str | None = None,
             device: str | None = None) -> CellResult:
    """Run one cell to its end (or skip it when finished) and return how it ended.

    Args:
        job: The cell and how to run it.
        stop: When set, the running stage is stopped gracefully and the cell ends ``interrupted``.
        node: How to name the machine in status files (default: the host name).
        device: How to name the device (default: ``cuda:<gpu>`` or ``cpu``).
    """
    grid, cell = job.grid, job.cell
    run_dir = cell_dir(grid, cell)
    node = node or socket.gethostname()
    device = device or ("cpu" if job.gpu is None else f"cuda:{job.gpu}")
    result = CellResult(cell.id, "failed", str(run_dir), device=device, tags=cell_tags(grid, cell), node=node)
    if not job.rerun and is_cell_done(run_dir):
        return skipped_result(result, run_dir)
    if job.storage_token is not None:
        try:
            check_probe(grid.output_dir, job.run_id, job.storage_token, node)
        except SharedStorageError as err:
            result.error = str(err)
            return result
    run_dir.mkdir(parents=True, exist_ok=True)
    lease = CellLease(run_dir, grid.lease_s)
    if not lease.acquire(wait_s=grid.lease_s * 1.5 + 5, cancel=stop):
        if stop is not None and stop.is_set():
            result.status, result.error = "interrupted", "stopped while waiting for the cell's lease"
        else:
            owner = lease.holder.owner if lease.holder else "another runner"
            result.status, result.error = "busy", f"the cell is held by {owner} (another benchmark run?)"
        return result
    lease.start_heartbeat()
    try:
        return _CellRun(job, result, run_dir, lease, stop).run()
    finally:
        lease.release()


def skipped_result(result: CellResult, run_dir: Path) -> CellResult:
    """``result`` marked ``skipped``, with the times and metric the finished cell recorded."""
    status = read_cell_status(run_dir) or {}
    result.status = "skipped"
    result.fit_s, result.test_s = status.get("fit_s"), status.get("test_s")
    result.attempts = int(status.get("attempt") or 0)
    return result


class _CellRun:
    """One attempt at a cell, with its lease held."""

    def __init__(self, job: CellJob, result: CellResult, run_dir: Path, lease: CellLease,
                 stop: threading.Event | None) -> None:
        self.job, self.result, self.run_dir, self.lease, self.stop = job, result, run_dir, lease, stop
        self.status: dict[str, Any] = {}

    def write_status(self, **changes: Any) -> None:
        if self.lease.lost.is_set():
            return  # the cell has a new owner: its files are theirs
        self.status.update(changes, updated_at=time.time())
        atomic_write_json(self.run_dir / STATUS_FILE, self.status, fsync=False)

    def run(self) -> CellResult:
        job, result, run_dir = self.job, self.result, self.run_dir
        if not job.rerun and is_cell_done(run_dir):  # finished by the runner we waited for
            return skipped_result(result, run_dir)
        previous = read_cell_status(run_dir) or {}
        if job.rerun and previous.get("run_id") != job.run_id:
            _reset_cell(run_dir)
            previous = {}
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        result.attempts = int(previous.get("attempt") or 0) + 1
        self.status = {**{k: v for k, v in asdict(result).items() if k not in ("status", "error")},
                       "status": "running", "stage": "config", "attempt": result.attempts,
                       "run_id": job.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "started_at": time.time(), "fit_done": False, "error": None}
        try:
            config = build_cell_config(job.grid, job.cell, run_dir)
            if job.cpu_only:
                config["trainer"]["accelerator"] = "cpu"
            write_cell_config(config, run_dir / CELL_CONFIG)
        except Exception as err:  # bad model config etc.: this cell fails, the grid goes on
            return self.fail("config", f"{type(err).__name__}: {err}", "")
        config_sha = _config_sha(config)
        same_config = previous.get("config_sha") in (None, config_sha)
        fit_done = bool(previous.get("fit_done")) and same_config and find_checkpoint(run_dir) is not None
        self.write_status(stage="fit", config_sha=config_sha, fit_done=fit_done)
        try:
            return self.stages(run_dir / CELL_CONFIG, fit_done, same_config, previous)
        except KeyboardInterrupt:  # Ray cancelled the task: the stage is already stopped
            self.write_status(status="interrupted", error="cancelled")
            raise

    def stages(self, config_path: Path, fit_done: bool, same_config: bool, previous: dict) -> CellResult:
        result, run_dir = self.result, self.run_dir
        env = self.env()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        where = f"attempt {result.attempts} on {result.node} ({result.device})"
        if fit_done:
            result.fit_s = previous.get("fit_s")
        else:
            resume = resumable_checkpoint(run_dir) if same_config else None
            how = f"resuming from {resume}" if resume else "from scratch"
            if not same_config and resumable_checkpoint(run_dir):
                how += " (the cell's config changed since its checkpoint)"
            outcome = self.stage("fit", config_path, resume, env, f"=== {stamp} {where}: fit {how}")
            result.fit_s = outcome.seconds
            if not outcome.ok:
                return self.stage_failed("fit", outcome)
            self.write_status(stage="test", fit_done=True, fit_s=outcome.seconds)
        ckpt = find_checkpoint(run_dir)
        outcome = self.stage("test", config_path, ckpt, env, f"=== {stamp} {where}: test {ckpt}")
        result.test_s = outcome.seconds
        if not outcome.ok:
            return self.stage_failed("test", outcome)
        if not metrics_complete(run_dir):
            return self.fail("test", "test finished but wrote no complete metrics.json",
                             log_tail(run_dir / "test.log"))
        result.status = "done"
        self.write_status(status="done", stage=None, test_s=outcome.seconds, finished_at=time.time())
        return result

    def stage(self, name: str, config_path: Path, ckpt: Path | None, env: dict[str, str],
              header: str) -> StageOutcome:
        cmd = self.job.command_builder(name, config_path, self.run_dir, ckpt)
        return run_stage(name, cmd, self.run_dir / f"{name}.log", env, Path(self.job.cwd),
                         timeout_s=self.job.grid.timeout_s, stop=self.stop, lost=self.lease.lost,
                         grace_s=self.job.grace_s, header=header)

    def stage_failed(self, name: str, outcome: StageOutcome) -> CellResult:
        result = self.result
        tail = log_tail(self.run_dir / f"{name}.log")
        if outcome.reason == "stopped":
            result.status, result.error = "interrupted", outcome.detail
            self.write_status(status="interrupted", error=outcome.detail)
            return result
        if outcome.reason in ("lease_lost", "signal") and self.job.retry_on_interrupt:
            self.write_status(status="interrupted", error=outcome.detail)
            raise CellInterrupted(f"{result.cell_id}: {outcome.detail}")
        if outcome.reason == "lease_lost":
            result.error = outcome.detail  # the cell's files belong to its new owner now
            return result
        return self.fail(name, outcome.detail, tail)

    def fail(self, stage: str, detail: str, tail: str) -> CellResult:
        self.result.status, self.result.error = "failed", detail
        if not self.lease.lost.is_set():
            write_error_log(self.run_dir, self.result.cell_id, stage, detail, tail)
        self.write_status(status="failed", stage=stage, error=detail)
        return self.result

    def env(self) -> dict[str, str]:
        job = self.job
        env = dict(os.environ)
        if job.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(job.gpu)
        elif job.cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""
        # users' own class paths in the current project must import in the subprocess
        env["PYTHONPATH"] = os.pathsep.join(p for p in (job.cwd, env.get("PYTHONPATH", "")) if p)
        if job.grid.wandb is not None:
            # resolved on the node that runs the cell: a node without a W&B key logs offline into
            # the cell's folder on the shared storage (`wandb sync` later), never fails the run
            env["WANDB_MODE"] = wandb_mode(job.grid.wandb)
            env.setdefault("WANDB_SILENT", "true")
        return env
