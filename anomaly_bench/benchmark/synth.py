"""Write the synthetic datasets a grid needs (its ``synth:`` section) before any cell runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_bench.benchmark.grid import GridError


def _writer() -> Callable[..., Any]:
    try:
        from anomaly_bench.data.synthetic import write_dataset
    except ImportError as err:
        raise GridError(f"the grid has a synth: section but anomaly_bench.data.synthetic is unavailable: {err}") from err
    return write_dataset


def prepare_synthetic(entries: tuple[dict[str, Any], ...], log: Callable[[str], None] = print,
                      writer: Callable[..., Any] | None = None) -> list[Path]:
    """Write each ``{layout, root, ...}`` dataset unless its root already holds files (the writer
    is deterministic for a seed, so an existing root is the same data; ``overwrite: true`` forces)."""
    written: list[Path] = []
    for entry in entries:
        entry = dict(entry)
        overwrite = bool(entry.pop("overwrite", False))
        root = Path(entry["root"])
        if root.is_dir() and any(root.iterdir()) and not overwrite:
            log(f"synthetic data: {root} exists, keeping it")
            continue
        write = writer or _writer()
        params = inspect.signature(write).parameters
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in entry if k not in params and not accepts_kwargs]
        if unknown:
            raise GridError(f"synth entry for {root}: unknown keys {unknown}; write_dataset accepts {list(params)}")
        log(f"synthetic data: writing {entry['layout']} layout to {root}")
        write(**entry)
        written.append(root)
    return written
