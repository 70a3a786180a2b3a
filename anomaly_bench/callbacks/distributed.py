"""Gathering Python rows from every DDP rank (test/predict outputs that only rank 0 writes)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_rows(rows: list[dict[str, Any]], key: str = "path") -> list[dict[str, Any]]:
    """All ranks' rows on every rank, de-duplicated by ``key``.

    DistributedSampler pads the last batch with repeated samples so that every rank gets the same
    number; keeping the first row per image makes the union exactly the dataset again.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        buckets: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(buckets, rows)
        rows = [row for bucket in buckets for row in (bucket or [])]
    seen: set[Any] = set()
    unique = []
    for row in rows:
        if row[key] in seen:
            continue
        seen.add(row[key])
        unique.append(row)
    return unique
