"""Atomic file writing: the one place every file that marks completion or holds state is written.

A reader must never see a half-written checkpoint, ``metrics.json``, status file or cache entry.
Each writer here writes to a temporary file *in the same folder* as the target (so the final
``os.replace`` is a rename within one file system, atomic on POSIX, whatever ``$TMPDIR`` is),
flushes and fsyncs it, then renames it over the target. A writer killed mid-write leaves at most a
``.<name>.<random>.tmp`` file beside the target, never a truncated target; ``remove_stale_temporaries``
cleans those up.

This module depends on the standard library only, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _temporary_beside(target: Path) -> tuple[int, Path]:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as err:  # name the file the caller asked for, not our temporary one
        raise _naming(err, target) from err
    return fd, Path(name)


def _naming(err: OSError, target: Path) -> OSError:
    """The same kind of error, about ``target`` (e.g. ``[Errno 13] Permission denied: 'out/x.json'``)."""
    reason = err.strerror or str(err)
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        reason = f"{reason} (a file stands where a folder of the path is needed)"
    return type(err)(err.errno, reason, str(target))


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk too (a crash after replace could otherwise lose it)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on normal exit it is renamed over ``target``.

    For writers that insist on a file name (``torch.save``, ``cv2.imwrite``, ``np.save``...)::

        with atomic_path(run_dir / "last.ckpt") as tmp:
            torch.save(state, tmp)

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    fd, tmp = _temporary_beside(target)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        try:
            os.replace(tmp, target)
        except IsADirectoryError as err:
            raise IsADirectoryError(err.errno, "is a folder; expected a file path", str(target)) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``target`` atomically (temporary file in the same folder + rename)."""
    with atomic_path(target, fsync=fsync) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8",
                      fsync: bool = True) -> None:
    """Write ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode(encoding), fsync=fsync)


def atomic_write_json(target: str | os.PathLike[str], payload: Any, indent: int | None = 2,
                      fsync: bool = True) -> None:
    """Write ``payload`` as JSON to ``target`` atomically (non-JSON values through ``str``)."""
    atomic_write_text(target, json.dumps(payload, indent=indent, default=str), fsync=fsync)


def remove_stale_temporaries(folder: str | os.PathLike[str], older_than_s: float = 0.0) -> list[Path]:
    """Delete temporaries this module left in ``folder`` (e.g. by a killed writer); returns them.

    Only files named ``.<name>.<random>.tmp`` are touched, and only those whose last change is
    at least ``older_than_s`` seconds old (a live writer's file is recent).
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        try:
            if path.is_file() and now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
