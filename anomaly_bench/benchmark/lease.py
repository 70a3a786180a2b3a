"""A per-cell lease lock: one runner at a time in a cell's directory, and a dead runner never blocks a retry.

A lease is a numbered file ``<run_dir>/lease/<generation>.json`` holding its owner (host, pid, the
process's start time, a random token) and an expiry time. The owner of a cell is whoever holds the
highest generation, as long as that lease is live (not released, not expired, and, when its owner
ran on this host, its process still exists).

To acquire, a runner reads the highest generation ``g``. Live: someone else owns the cell. Absent,
released or dead: the runner writes its lease to a temporary file and links it to the name of
generation ``g + 1``; ``os.link`` fails when the name exists, so of two runners that both saw ``g``
die exactly one wins, even on NFS. The winner then checks that no higher generation appeared
meanwhile. Only the owner ever rewrites its own file: a heartbeat thread renews the expiry (atomic
rename) while the cell runs. The lease is *lost* when a higher generation appears or the heartbeat
could not renew before the expiry (a suspended or partitioned runner); ``lost`` is then set and the
runner must stop writing into the cell.

Expiry compares wall-clock times across hosts, so leases must be much longer than the clock skew
between nodes (NTP keeps it well under a second; the default lease is 60 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from anomaly_bench.atomic import atomic_write_json

LEASE_DIR = "lease"
DEFAULT_LEASE_S = 60.0
_NAME = re.compile(r"(\d+)\.json")


@dataclass(frozen=True)
class LeaseInfo:
    """The content of one lease file."""

    generation: int
    host: str
    pid: int
    pid_start: str | None
    token: str
    expires_at: float
    released: bool = False

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}"


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 overall; fields 1-2 end with ")"


def process_alive(pid: int, pid_start: str | None) -> bool:
    """Whether the process ``pid`` of this host still exists and is the one that took the lease."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if pid_start is None:
        return True
    now_start = process_start_time(pid)
    return now_start is None or now_start == pid_start


def _read(path: Path, default_lease_s: float) -> LeaseInfo | None:
    match = _NAME.fullmatch(path.name)
    if match is None:
        return None
    try:
        raw = json.loads(path.read_text())
        return LeaseInfo(generation=int(match.group(1)), host=str(raw["host"]), pid=int(raw["pid"]),
                         pid_start=raw.get("pid_start"), token=str(raw["token"]),
                         expires_at=float(raw["expires_at"]), released=bool(raw.get("released", False)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Not written by this module (files are linked complete): count it as held until its
        # modification time plus one lease, so a garbage file cannot block a cell forever.
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return LeaseInfo(int(match.group(1)), "?", -1, None, "?", mtime + default_lease_s)


class CellLease:
    """The lease on one cell directory.

    Args:
        run_dir: The cell's directory; leases live in its ``lease/`` folder.
        lease_s: How long a lease lasts without renewal; the heartbeat renews it every third of that.
        host: This runner's host name (default: ``socket.gethostname()``); tests pass other names to
            play runners on other machines.
    """

    def __init__(self, run_dir: str | os.PathLike[str], lease_s: float = DEFAULT_LEASE_S,
                 host: str | None = None) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.folder = Path(run_dir) / LEASE_DIR
        self.lease_s = float(lease_s)
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.pid_start = process_start_time(self.pid)
        self.token = secrets.token_hex(8)
        self.generation: int | None = None
        self.expires_at = 0.0
        self.lost = threading.Event()
        self.holder: LeaseInfo | None = None  # the live lease that stopped the last acquire
        self._beat: threading.Thread | None = None
        self._stop_beat = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ reading
    def leases(self) -> list[LeaseInfo]:
        """Every lease file, lowest generation first."""
        if not self.folder.is_dir():
            return []
        found = [_read(p, self.lease_s) for p in self.folder.iterdir()]
        return sorted((f for f in found if f is not None), key=lambda f: f.generation)

    def is_live(self, info: LeaseInfo, now: float | None = None) -> bool:
        """Whether ``info`` still holds its cell.

        Args:
            info: A lease file's content.
            now: The wall-clock time to judge expiry at (default: now).
        """
        if info.released or info.expires_at <= (time.time() if now is None else now):
            return False
        mine = info.pid == self.pid and info.token == self.token
        if info.host == self.host and info.pid > 0 and not mine:
            return process_alive(info.pid, info.pid_start)
        return True

    @property
    def held(self) -> bool:
        return self.generation is not None and not self.lost.is_set()

    # ------------------------------------------------------------------------------ acquiring
    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; never waits. ``holder`` names the owner on failure."""
        if self.held:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        leases = self.leases()
        top = leases[-1] if leases else None
        if top is not None and self.is_live(top):
            self.holder = top
            return False
        generation = (top.generation if top else 0) + 1
        expires_at = time.time() + self.lease_s
        if not self._create(generation, expires_at):
            self.holder = next((i for i in reversed(self.leases()) if self.is_live(i)), None)
            return False
        newer = [i for i in self.leases() if i.generation > generation]
        if newer:  # someone judged from a later view than ours: yield to them
            self._unlink(generation)
            self.holder = newer[-1]
            return False
        self.generation, self.expires_at, self.holder = generation, expires_at, None
        self.lost.clear()
        for old in leases:  # expired or released: nobody will read them again
            self._unlink(old.generation)
        return True

    def acquire(self, wait_s: float = 0.0, poll_s: float | None = None,
                cancel: threading.Event | None = None) -> bool:
        """Take the lease, waiting up to ``wait_s`` seconds for a live holder to finish or die.

        Args:
            wait_s: Longest wait; a dead holder on another host is waited out until its lease expires,
                so a retry should wait a little longer than one lease.
            poll_s: Seconds between attempts (default: a tenth of the lease, between 0.05 and 2 s).
            cancel: When set, stop waiting (returns False).
        """
        poll = poll_s if poll_s is not None else min(2.0, max(0.05, self.lease_s / 10))
        deadline = time.monotonic() + wait_s
        while True:
            if self.try_acquire():
                return True
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                return False
            if cancel is not None:
                cancel.wait(poll)
            else:
                time.sleep(poll)

    def _path(self, generation: int) -> Path:
        return self.folder / f"{generation:08d}.json"

    def _payload(self, expires_at: float, released: bool = False) -> dict:
        info = LeaseInfo(0, self.host, self.pid, self.pid_start, self.token, expires_at, released)
        payload = asdict(info)
        payload.pop("generation")
        return payload

    def _create(self, generation: int, expires_at: float) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".lease.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self._payload(expires_at), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, self._path(generation))  # fails if the generation exists: one winner
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _unlink(self, generation: int) -> None:
        with contextlib.suppress(OSError):
            self._path(generation).unlink()

    # ------------------------------------------------------------------------------ holding
    def renew(self) -> bool:
        """Push the expiry one lease ahead; False (and ``lost`` set) when the lease was lost."""
        with self._lock:
            if not self.held:
                return False
            now = time.time()
            newer = [i for i in self.leases() if i.generation > (self.generation or 0)]
            if newer or now >= self.expires_at:
                self.lost.set()
                return False
            expires_at = now + self.lease_s
            atomic_write_json(self._path(self.generation), self._payload(expires_at), fsync=False)
            self.expires_at = expires_at
            return True

    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Renew the lease from a daemon thread until ``release`` (or until it is lost).

        Args:
            interval_s: Seconds between renewals (default: a third of the lease).
        """
        interval = interval_s if interval_s is not None else self.lease_s / 3

        def beat() -> None:
            while not self._stop_beat.wait(interval):
                try:
                    if not self.renew():
                        return
                except OSError:  # storage hiccup: the next beat retries; expiry decides
                    continue

        self._stop_beat.clear()
        self._beat = threading.Thread(target=beat, name=f"lease-{self.folder.parent.name}", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop_beat.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None

    def release(self) -> None:
        """Stop the heartbeat and give the cell up (a lost lease is left to its new owner)."""
        self.stop_heartbeat()
        with self._lock:
            if self.generation is not None and not self.lost.is_set():
                self._unlink(self.generation)
            self.generation = None

    def __enter__(self) -> CellLease:
        if not self.try_acquire():
            owner = self.holder.owner if self.holder else "another runner"
            raise LeaseBusyError(f"cell {self.folder.parent} is held by {owner}")
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseBusyError(RuntimeError):
    """Another live runner holds the cell."""
