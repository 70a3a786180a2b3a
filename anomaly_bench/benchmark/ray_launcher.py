"""The ``ray`` launcher: each cell is a Ray task, placed by Ray on any node of a cluster.

The task requests the cell's resources (``ray.cpus_per_cell``, ``gpus_per_cell``,
``memory_gb_per_cell``) and runs the same ``run_cell`` the local launcher runs: lease, ``fit`` and
``test`` as guarded CLI subprocesses, done marker, all in the cell's folder on shared storage. Ray
re-runs a task whose node died (``max_retries``) and one that raised ``CellInterrupted`` (its stage
was killed from outside); the new attempt takes the dead one's lease over and resumes from
``last.ckpt``. A cell that keeps failing ends ``failed`` with its log tail; the grid goes on.

Before any cell is sent, every node that could run one proves it sees the grid's ``output_dir``
(``storage.py``): otherwise the run stops with one line naming the folder and the node.

Ray is imported here only, and this module only when ``--launcher ray`` is asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.benchmark.cell_config import cell_tags
from anomaly_bench.benchmark.cell_runner import (
    STATUS_FILE,
    CellInterrupted,
    CellJob,
    CellResult,
    cell_dir,
    log_tail,
    read_cell_status,
    run_cell,
    write_error_log,
)
from anomaly_bench.benchmark.grid import RaySpec
from anomaly_bench.benchmark.launchers import Finish, LauncherError
from anomaly_bench.benchmark.stage import StopRequest
from anomaly_bench.benchmark.storage import SharedStorageError, check_probe, remove_probe, write_probe

RAY_MISSING = "--launcher ray needs Ray: pip install 'anomaly_bench[cluster]' (or pip install 'ray>=2.9')"
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # cells exchange only small results; keep a local instance light
PROBE_TIMEOUT_S = 180.0
# W&B settings the tasks inherit from the driver. Not the API key: Ray keeps runtime environments in
# its cluster state (dashboard, job list); nodes get the key where `ray start` runs, or log offline.
FORWARDED_ENV = ("WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_SILENT")


def import_ray(address: str | None = None) -> Any:
    """Import Ray (a one-line error when it is missing). Joining a cluster (``address``) with a Ray
    token configured for this user turns on Ray's token mode first, as ``ray start`` does for the
    cluster itself: Ray reads the mode once, at import."""
    if address and "RAY_AUTH_MODE" not in os.environ and _ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:  # imported already (a user's own process): refresh Ray's cached config
            try:
                from ray._raylet import Config

                Config.initialize("")
            except Exception:  # private API: without it, the user sets RAY_AUTH_MODE=token themselves
                pass
    try:
        import ray
    except ImportError as err:
        raise LauncherError(RAY_MISSING) from err
    return ray


def node_label() -> str:
    """``<host>/<first 8 hex digits of the Ray node id>``: readable, and unique per node."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def ray_cell_task(job: CellJob) -> CellResult:
    """The body of a cell's Ray task (runs on a worker node)."""
    import ray

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = "cuda:" + ",".join(gpu_ids) if gpu_ids and not job.cpu_only else "cpu"
    return run_cell(job, node=node_label(), device=device)


def storage_probe_task(output_dir: str, run_id: str, token: str) -> str:
    """Prove this node sees the driver's ``output_dir``; returns the node's label."""
    node = node_label()
    check_probe(Path(output_dir), run_id, token, node)
    return node


class RayLauncher:
    """Runs cells as Ray tasks.

    Args:
        spec: The grid's ``ray:`` section.
        address: Cluster address (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None starts a local
            Ray instance (or joins ``$RAY_ADDRESS`` when set).
        log: Where progress lines go.
    """

    name = "ray"

    def __init__(self, spec: RaySpec, address: str | None = None, log: Callable[[str], None] = print) -> None:
        self.spec, self.address, self.log = spec, address, log
        self.cluster = "Ray"

    def describe(self) -> str:
        return self.cluster

    # ------------------------------------------------------------------------------ connecting
    def connect(self, ray: Any) -> bool:
        """Join or start Ray; returns whether this call initialised Ray (and must shut it down)."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        quiet = {"logging_level": logging.WARNING, "configure_logging": True}
        ours = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                # "local": always a new instance, never a cluster some `ray start` left on this machine
                kwargs = {"address": "local", "include_dashboard": False,
                          "object_store_memory": LOCAL_OBJECT_STORE_BYTES, **quiet}
                kwargs.update(self.spec.init_args)
                ray.init(**kwargs)
        except Exception as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise LauncherError(f"cannot start or join {where}: {type(err).__name__}: {_first_line(err)}") from err
        if threading.current_thread() is threading.main_thread():
            # Ray's driver installs handlers that abort the process on SIGTERM; ours stop the cells first
            for sig, handler in ours.items():
                if callable(handler):
                    signal.signal(sig, handler)
        return True

    def runtime_env(self, cwd: str) -> dict[str, Any]:
        """The driver's project folder on the workers' import path (users' own classes; the stages get it
        through the cell runner too), and the W&B settings of the driver's environment."""
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, os.environ.get("PYTHONPATH", "")) if p)
        return {"env_vars": env}

    def gpus_per_cell(self, ray: Any, cpu_grid: bool) -> float:
        if cpu_grid:
            return 0.0
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if self.spec.gpus_per_cell is None:
            return 1.0 if has_gpus else 0.0
        if self.spec.gpus_per_cell > 0 and not has_gpus:
            self.log("warning: ray.gpus_per_cell > 0 but no node of the cluster has a GPU yet: "
                     "cells wait until one joins")
        return self.spec.gpus_per_cell

    def fitting_nodes(self, ray: Any, cpus: float, gpus: float, memory: float | None) -> list[dict]:
        """Alive nodes large enough for one cell."""
        nodes = []
        for node in ray.nodes():
            res = node.get("Resources", {})
            if not node.get("Alive"):
                continue
            enough_memory = memory is None or res.get("memory", 0) >= memory
            if res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus and enough_memory:
                nodes.append(node)
        return nodes

    def check_storage(self, ray: Any, nodes: Sequence[dict], output_dir: Path, run_id: str, cwd: str) -> str:
        """Every node that could run a cell reads the driver's probe token under ``output_dir``; returns
        the token (cells check it again, for nodes that join later)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = write_probe(output_dir, run_id)
        probe = ray.remote(storage_probe_task)
        options = {"num_cpus": 0, "max_retries": 0, "runtime_env": self.runtime_env(cwd)}
        refs = {}
        for node in nodes:
            where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ref = probe.options(scheduling_strategy=where, **options).remote(str(output_dir), run_id, token)
            refs[ref] = node
        if not refs:
            return token
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, SharedStorageError):
                    raise LauncherError(str(cause)) from None
                node = refs[ref]["NodeID"][:8]
                raise LauncherError(f"storage probe failed on node {node}: {_first_line(err)}") from None
        if waiting:
            names = ", ".join(refs[r]["NodeID"][:8] for r in waiting)
            raise LauncherError(f"nodes {names} did not answer the shared-storage probe "
                                f"within {PROBE_TIMEOUT_S:.0f} s")
        return token

    # ------------------------------------------------------------------------------ running
    def run(self, jobs: Sequence[CellJob], finish: Finish, stop: StopRequest) -> list[CellResult]:
        """Run ``jobs`` as Ray tasks; one result per job, in order.

        Args:
            jobs: The cells to run.
            finish: Called with each cell's result as it ends (the status board).
            stop: When set, the tasks are cancelled (running stages get their grace period).
        """
        ray = import_ray(self.address or os.environ.get("RAY_ADDRESS"))
        started = self.connect(ray)
        try:
            return self._run(ray, list(jobs), finish, stop)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, jobs: list[CellJob], finish: Finish, stop: StopRequest) -> list[CellResult]:
        if not jobs:
            return []
        grid, cwd, run_id = jobs[0].grid, jobs[0].cwd, jobs[0].run_id
        total = ray.cluster_resources()
        spec = self.spec
        gpus = self.gpus_per_cell(ray, grid.devices == "cpu")
        memory = spec.memory_gb_per_cell * 2**30 if spec.memory_gb_per_cell else None
        nodes = self.fitting_nodes(ray, spec.cpus_per_cell, gpus, memory)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        self.cluster = (f"Ray ({len(alive)} nodes, {total.get('CPU', 0):.0f} CPUs, "
                        f"{total.get('GPU', 0):.0f} GPUs; {spec.cpus_per_cell:g} CPU + {gpus:g} GPU "
                        "per cell)")
        if not nodes:
            self.log(f"warning: no node of the cluster can fit a cell ({spec.cpus_per_cell:g} CPUs, "
                     f"{gpus:g} GPUs): cells wait until such a node joins")
        try:
            token = self.check_storage(ray, nodes, grid.output_dir, run_id, cwd)
            results = self.submit_and_wait(ray, jobs, gpus, memory, token, finish, stop)
        finally:
            remove_probe(grid.output_dir, run_id)
        return [results[job.cell.id] for job in jobs]

    def submit_and_wait(self, ray: Any, jobs: list[CellJob], gpus: float, memory: float | None, token: str,
                        finish: Finish, stop: StopRequest) -> dict[str, CellResult]:
        """One task per cell, all submitted at once (Ray queues what does not fit); results as they come.
        A stop cancels the tasks (the running stages get a grace period), then kills what is left."""
        spec = self.spec
        options: dict[str, Any] = {
            "num_cpus": spec.cpus_per_cell, "num_gpus": gpus, "max_retries": spec.max_retries,
            "retry_exceptions": [CellInterrupted], "runtime_env": self.runtime_env(jobs[0].cwd)}
        if memory:
            options["memory"] = int(memory)
        task = ray.remote(ray_cell_task)
        pending = {}
        for job in jobs:
            job = replace(job, cpu_only=gpus == 0, retry_on_interrupt=True, storage_token=token)
            pending[task.options(name=f"cell:{job.cell.id}", **options).remote(job)] = job
        results: dict[str, CellResult] = {}
        cancelled_at: float | None = None
        forced = False
        while pending:
            if stop.is_set() and cancelled_at is None:
                cancelled_at = time.monotonic()
                for ref in pending:
                    ray.cancel(ref, force=False)
            if cancelled_at is not None and not forced and (
                    stop.requests > 1 or time.monotonic() - cancelled_at > jobs[0].grace_s + 15):
                forced = True
                for ref in pending:  # asked twice, or the graceful cancel was not enough: kill the workers
                    ray.cancel(ref, force=True)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                job = pending.pop(ref)
                results[job.cell.id] = result = self.collect(ray, ref, job)
                finish(result)
        return results

    def collect(self, ray: Any, ref: Any, job: CellJob) -> CellResult:
        """The task's result; a task that failed for good becomes a ``failed`` cell with its log tail."""
        try:
            return ray.get(ref)
        except (ray.exceptions.TaskCancelledError, KeyboardInterrupt):
            return _result(job, "interrupted", "cancelled: the run was stopped")
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None) or err
            detail = f"{type(cause).__name__}: {_first_line(cause)}"
            if isinstance(cause, CellInterrupted):
                detail += f" ({self.spec.max_retries + 1} attempts)"
        except ray.exceptions.RayError as err:  # the worker or its node died on every attempt
            detail = f"{type(err).__name__}: {_first_line(err)} ({self.spec.max_retries + 1} attempts)"
        return self.failed(job, detail)

    @staticmethod
    def failed(job: CellJob, detail: str) -> CellResult:
        run_dir = cell_dir(job.grid, job.cell)
        result = _result(job, "failed", detail)
        logs = [p for p in (run_dir / "fit.log", run_dir / "test.log") if p.is_file()]
        newest = max(logs, key=lambda p: p.stat().st_mtime) if logs else None
        status = read_cell_status(run_dir) or {}
        result.attempts = int(status.get("attempt") or 0)
        try:
            write_error_log(run_dir, job.cell.id, newest.stem if newest else "start", detail,
                            log_tail(newest) if newest else "")
            atomic_write_json(run_dir / STATUS_FILE, {**status, "status": "failed", "error": detail,
                                                      "updated_at": time.time()}, fsync=False)
        except OSError:
            pass
        return result


def _ray_token_available() -> bool:
    """A Ray authentication token is configured for this user (variable, token file)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def _result(job: CellJob, status: str, error: str) -> CellResult:
    return CellResult(job.cell.id, status, str(cell_dir(job.grid, job.cell)),
                      tags=cell_tags(job.grid, job.cell), error=error)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
