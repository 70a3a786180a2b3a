"""Keeps one stage of a cell (its ``fit`` or ``test`` process group) from outliving its runner.

Run as a script, standard library only (no package import, so it starts in milliseconds)::

    python stage_guard.py RUNNER_PID GRACE_S -- python -m anomaly_bench.cli fit --config ...

The runner starts this guard in a new session; the guard starts the stage in another new session
(its own process group, so every process the stage forks can be signalled at once) and waits:

- SIGTERM / SIGINT / SIGHUP from the runner: passed on to the stage's group; after ``GRACE_S``
  seconds (or at a second signal) the group is killed.
- SIGUSR1 from the runner: kill the stage's group now (the runner lost the cell's lease).
- The runner died (SIGKILL, a Ray worker lost with its node, a crash): the stage's group is killed
  at once, without grace, because a new runner may take the cell over immediately and two writers
  must never share a cell directory. The kernel tells the guard (``PR_SET_PDEATHSIG``); a poll of
  the parent pid catches it where that is unavailable.
- The stage ended: whatever it left in its group (data-loader workers, a logger's helper) is killed,
  and the guard exits with the stage's status (re-raising the stage's signal, if it had one).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_like(returncode: int) -> None:
    """Exit with the stage's status: the same code, or death by the same signal."""
    if returncode < 0:
        sig = -returncode
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)
        sys.exit(128 + sig)
    sys.exit(returncode)


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: stage_guard.py RUNNER_PID GRACE_S -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    runner, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    # Signals may come before the stage exists: note them, act once it does.
    state: dict[str, Any] = {"child": None, "pending": None, "since": None}

    def runner_gone() -> bool:
        return os.getppid() != runner

    def stop(sig: int) -> None:
        child = state["child"]
        if child is None:
            state["pending"] = sig
        elif sig == signal.SIGKILL or runner_gone() or state["since"] is not None:
            kill_group(child.pid, signal.SIGKILL)  # killed runner, kill request, or asked twice: no grace
        else:
            state["since"] = time.monotonic()
            kill_group(child.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: stop(s))
    signal.signal(signal.SIGUSR1, lambda s, f: stop(signal.SIGKILL))
    set_parent_death_signal(signal.SIGTERM)
    if runner_gone():  # the runner died before the kernel could watch it
        sys.exit(128 + signal.SIGKILL)
    state["child"] = child = subprocess.Popen(command, start_new_session=True,
                                              preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))
    if state["pending"] is not None:
        stop(state["pending"])
    while True:
        try:
            returncode = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            pass
        if runner_gone():
            print(f"[stage_guard] runner {runner} is gone: killing the stage", flush=True)
            kill_group(child.pid, signal.SIGKILL)
        since = state["since"]
        if since is not None and time.monotonic() - since > grace:
            print(f"[stage_guard] stage still running {grace:.0f} s after the stop: killing it", flush=True)
            kill_group(child.pid, signal.SIGKILL)
    kill_group(child.pid, signal.SIGKILL)
    exit_like(returncode)


if __name__ == "__main__":
    main(sys.argv[1:])
