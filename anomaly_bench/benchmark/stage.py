"""Run one stage of a cell (``fit`` or ``test``) as a guarded child process.

Each stage runs in its own process group under ``stage_guard.py`` (see there), so a stop reaches
every process of the stage, and the stage dies with its runner: no orphan keeps writing into a cell
after its runner (or its Ray node) is gone. Stops come from three places: the runner was asked to
stop (SIGINT / SIGTERM forwarded, ``stop`` set: graceful), the cell's lease was lost (``lost`` set:
someone else owns the cell now, kill at once), or the stage ran past its time limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GUARD = Path(__file__).with_name("stage_guard.py")
DEFAULT_GRACE_S = 20.0
POLL_S = 0.2


@dataclass(frozen=True)
class StageOutcome:
    """How a stage ended. ``reason``: ``ok``, ``exit`` (non-zero code), ``signal`` (killed by a signal
    nobody here sent, e.g. the OOM killer), ``timeout``, ``stopped`` (the runner was asked to stop),
    ``lease_lost`` or ``start`` (could not start)."""

    reason: str
    seconds: float
    returncode: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


class ActiveStages:
    """The guards of the stages running in this process, so a signal handler can pass a stop on."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every running stage's guard (``KILL_NOW``: kill the stages at once);
        returns how many were signalled."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc.pid, sig)
        return len(procs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)


ACTIVE = ActiveStages()


class StopRequest(threading.Event):
    """A stop flag that remembers the signal that asked for it, so the stage receives the same one."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: int = signal.SIGTERM
        self.requests = 0  # a second request means: no more grace

    def request(self, sig: int = signal.SIGTERM) -> None:
        self.signal = sig
        self.requests += 1
        self.set()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


KILL_NOW = signal.SIGUSR1
"""Tells a stage's guard to kill the stage's whole process group at once (the guard's group holds
only the guard: the stage's processes are reachable through it alone)."""


def _kill_now(proc: subprocess.Popen) -> None:
    _signal_group(proc.pid, KILL_NOW)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # a guard that does not answer: its stage dies with it (PDEATHSIG)
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _describe(stage: str, returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{stage} was killed by {name}"
    return f"{stage} exited with code {returncode}"


def run_stage(stage: str, command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path,
              timeout_s: float | None = None, stop: threading.Event | None = None,
              lost: threading.Event | None = None, grace_s: float = DEFAULT_GRACE_S,
              header: str = "") -> StageOutcome:
    """Run ``command`` under the guard, its output appended to ``log_path``; wait for it.

    Args:
        stage: ``fit`` or ``test`` (for messages).
        command: The stage's argv.
        log_path: Log file; stdout and stderr of the stage are appended after ``header``.
        env: The stage's environment.
        cwd: The stage's working directory.
        timeout_s: Time limit of the stage (None: none).
        stop: When set, the stage is stopped gracefully (SIGTERM, then SIGKILL after ``grace_s``).
        lost: When set, the stage is killed at once (the cell's lease was lost).
        grace_s: Seconds a stopped stage gets to exit before it is killed.
        header: Line(s) written to the log before the command.
    """
    argv = [sys.executable, str(GUARD), str(os.getpid()), str(grace_s), "--", *map(str, command)]
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:
        if header:
            log_file.write(header.rstrip("\n") + "\n")
        log_file.write("$ " + " ".join(map(str, command)) + "\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                    start_new_session=True)
        except OSError as err:
            return StageOutcome("start", time.perf_counter() - start, None, f"{stage} could not start: {err}")
        ACTIVE.add(proc)
        reason = ""
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if reason:
                    continue
                if lost is not None and lost.is_set():
                    reason = "lease_lost"
                    _signal_group(proc.pid, KILL_NOW)
                elif stop is not None and stop.is_set():
                    reason = "stopped"
                    _signal_group(proc.pid, getattr(stop, "signal", signal.SIGTERM))
                elif timeout_s is not None and time.perf_counter() - start > timeout_s:
                    reason = "timeout"
                    _signal_group(proc.pid, signal.SIGTERM)
        except BaseException:
            # KeyboardInterrupt (Ray's task cancel) or any other exit path: stop the stage first.
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s + 5)
            except subprocess.TimeoutExpired:
                _kill_now(proc)
            raise
        finally:
            ACTIVE.discard(proc)
    seconds = time.perf_counter() - start
    if reason == "timeout":
        return StageOutcome("timeout", seconds, returncode, f"{stage} timed out after {timeout_s:.0f}s")
    if reason == "stopped":
        return StageOutcome("stopped", seconds, returncode, f"{stage} stopped on request")
    if reason == "lease_lost":
        return StageOutcome("lease_lost", seconds, returncode,
                            f"{stage} killed: the cell's lease was lost (another runner owns the cell now)")
    if returncode == 0:
        return StageOutcome("ok", seconds, 0)
    reason = "signal" if returncode < 0 else "exit"
    return StageOutcome(reason, seconds, returncode, _describe(stage, returncode))
