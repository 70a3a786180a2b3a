"""Shared-storage check for multi-node grids.

Run directories live under the grid's ``output_dir``; on a cluster every node must see the same
folder at the same path. The driver writes a random token under ``output_dir`` before any cell is
sent out; a node proves it sees the driver's storage (not merely a local folder with the same name)
by reading that token back, and proves it can write there by writing a probe file of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

from anomaly_bench.atomic import atomic_write_text

PROBE_DIR = ".storage_probe"


class SharedStorageError(RuntimeError):
    """A node cannot see or write the grid's output_dir."""


def write_probe(output_dir: Path, run_id: str) -> str:
    """Write a fresh token for ``run_id`` under ``output_dir``; returns it.

    Args:
        output_dir: The grid's output folder.
        run_id: The run the token belongs to.
    """
    token = secrets.token_hex(16)
    atomic_write_text(Path(output_dir) / PROBE_DIR / f"{run_id}.token", token)
    return token


def check_probe(output_dir: Path, run_id: str, token: str, node: str | None = None) -> None:
    """Raise ``SharedStorageError`` (one line naming ``output_dir`` and the node) unless this node reads
    the driver's token and can write beside it.

    Args:
        output_dir: The grid's output folder, as the driver sees it.
        run_id: The run whose token the driver wrote.
        token: The token the driver wrote.
        node: How to name this node in the message (default: the host name).
    """
    node = node or socket.gethostname()
    folder = Path(output_dir) / PROBE_DIR
    hint = "the grid's output_dir must be shared storage mounted at the same path on every node"
    try:
        seen = (folder / f"{run_id}.token").read_text().strip()
    except OSError as err:
        why = f"{type(err).__name__}: {err.strerror or err}"
        raise SharedStorageError(f"node {node} cannot see output_dir {output_dir} ({why}); {hint}") from err
    if seen != token:
        raise SharedStorageError(f"node {node} sees another folder at output_dir {output_dir} "
                                 f"(the driver's probe token differs); {hint}")
    mine = folder / f"{run_id}.{node.replace('/', '_')}.{os.getpid()}"
    try:
        atomic_write_text(mine, token, fsync=False)
    except OSError as err:
        raise SharedStorageError(
            f"node {node} cannot write to output_dir {output_dir} ({err}); {hint}") from err
    with contextlib.suppress(OSError):
        mine.unlink()


def remove_probe(output_dir: Path, run_id: str) -> None:
    """Remove the token of ``run_id`` (the run is over)."""
    with contextlib.suppress(OSError):
        (Path(output_dir) / PROBE_DIR / f"{run_id}.token").unlink()
