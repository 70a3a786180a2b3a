"""Speed and memory of the test stage: ``<run_dir>/test_stats.json``.

Schema (``format: anomaly_bench.test_stats``, ``version: 1``)::

    {"num_images": 83,                       test images scored (all ranks)
     "seconds": 4.2,                         wall time of the test loop (data, model, metric updates)
     "images_per_s": 19.8,                   num_images / seconds
     "device": "cuda:0" | "cpu",             where the model ran
     "device_name": "NVIDIA H100 80GB HBM3" | null,
     "peak_rss_bytes": 2147483648 | null,    the process's peak resident memory (CPU) so far
     "peak_cuda_allocated_bytes": ... | null, torch's peak allocated CUDA memory during the loop
     "peak_cuda_reserved_bytes": ... | null,  torch's peak reserved CUDA memory during the loop
     "batch_size": 32 | null, "precision": "16-mixed" | null, "world_size": 1}

Any key may be absent or null; :func:`read_test_stats` returns None when the file is absent or
unreadable, so a report of an older run simply shows no speed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from anomaly_bench.atomic import atomic_write_json

TEST_STATS_FILE = "test_stats.json"
TEST_STATS_FORMAT = "anomaly_bench.test_stats"
TEST_STATS_VERSION = 1


@dataclass
class TestStats:
    """What ``test_stats.json`` holds (see the module docstring)."""

    __test__ = False  # not a pytest test class despite the name

    num_images: int
    seconds: float
    device: str = "cpu"
    device_name: str | None = None
    peak_rss_bytes: int | None = None
    peak_cuda_allocated_bytes: int | None = None
    peak_cuda_reserved_bytes: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    world_size: int = 1

    @property
    def images_per_s(self) -> float | None:
        """Throughput of the test loop, or None when no time was measured."""
        return self.num_images / self.seconds if self.seconds > 0 else None


def peak_rss_bytes() -> int | None:
    """The peak resident memory of this process so far, in bytes (None where unsupported)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def write_test_stats(run_dir: str | Path, stats: TestStats) -> Path:
    """Write ``<run_dir>/test_stats.json`` atomically.

    Args:
        run_dir: the run directory.
        stats: the measured numbers.
    """
    payload: dict[str, Any] = {
        "format": TEST_STATS_FORMAT,
        "version": TEST_STATS_VERSION,
        **asdict(stats),
        "images_per_s": stats.images_per_s,
    }
    path = Path(run_dir) / TEST_STATS_FILE
    atomic_write_json(path, payload)
    return path


def _optional_int(value: Any) -> int | None:
    return (
        int(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def read_test_stats(run_dir: str | Path) -> TestStats | None:
    """The test statistics of a run, or None when ``test_stats.json`` is absent or unreadable.

    Args:
        run_dir: the run directory.
    """
    path = Path(run_dir) / TEST_STATS_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != TEST_STATS_FORMAT:
        return None
    seconds = payload.get("seconds")
    return TestStats(
        num_images=_optional_int(payload.get("num_images")) or 0,
        seconds=float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0,
        device=str(payload.get("device") or "unknown"),
        device_name=payload.get("device_name") if isinstance(payload.get("device_name"), str) else None,
        peak_rss_bytes=_optional_int(payload.get("peak_rss_bytes")),
        peak_cuda_allocated_bytes=_optional_int(payload.get("peak_cuda_allocated_bytes")),
        peak_cuda_reserved_bytes=_optional_int(payload.get("peak_cuda_reserved_bytes")),
        batch_size=_optional_int(payload.get("batch_size")),
        precision=payload.get("precision") if isinstance(payload.get("precision"), str) else None,
        world_size=_optional_int(payload.get("world_size")) or 1,
    )


class TestStatsRecorder(Callback):
    """Times the test loop, counts its images and records peak memory into ``test_stats.json``.

    Args:
        enabled: write the file at the end of ``test``.
    """

    __test__ = False

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._start = 0.0
        self._images = 0
        self._batch_size: int | None = None

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._images, self._batch_size = 0, None
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        size = len(getattr(batch, "path", ()) or ())
        self._images += size
        self._batch_size = max(self._batch_size or 0, size) or None

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        import torch

        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - self._start
        images = self._images
        if trainer.world_size > 1:
            images = int(
                trainer.strategy.reduce(torch.tensor(float(images), device=device), reduce_op="sum").item()
            )
        if not (self.enabled and trainer.is_global_zero):
            return
        on_cuda = device.type == "cuda"
        stats = TestStats(
            num_images=images,
            seconds=seconds,
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if on_cuda else None,
            peak_rss_bytes=peak_rss_bytes(),
            peak_cuda_allocated_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else None,
            peak_cuda_reserved_bytes=int(torch.cuda.max_memory_reserved(device)) if on_cuda else None,
            batch_size=self._batch_size,
            precision=str(trainer.precision) if trainer.precision is not None else None,
            world_size=int(trainer.world_size),
        )
        write_test_stats(trainer.default_root_dir, stats)
