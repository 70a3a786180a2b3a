"""test_stats.json: the recorder in a real Trainer, the writer / reader round trip, tolerant reads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from anomaly_bench.callbacks.test_stats import (
    TEST_STATS_FILE,
    TestStats,
    TestStatsRecorder,
    peak_rss_bytes,
    read_test_stats,
    write_test_stats,
)


class _Scorer(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def test_step(self, batch, batch_idx):
        return self.layer(batch.image).sum()


class _Loader:
    """An iterable of batches with ``.path`` (what the recorder counts), like the datamodules' Batch."""

    def __init__(self, sizes):
        self.batches = [
            SimpleNamespace(image=torch.randn(n, 4), path=[f"img{i}.png" for i in range(n)]) for n in sizes
        ]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_recorder_in_a_trainer_writes_the_counts(tmp_path):
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[TestStatsRecorder()],
    )
    trainer.test(_Scorer(), dataloaders=_Loader([4, 4, 3]), verbose=False)
    payload = json.loads((tmp_path / TEST_STATS_FILE).read_text())
    assert payload["format"] == "anomaly_bench.test_stats" and payload["version"] == 1
    stats = read_test_stats(tmp_path)
    assert stats.num_images == 11 and stats.batch_size == 4 and stats.device == "cpu"
    assert stats.seconds > 0 and payload["images_per_s"] == pytest.approx(11 / stats.seconds)
    assert stats.peak_rss_bytes >= 50 * 2**20  # python + torch alone need more than 50 MiB
    assert stats.peak_cuda_allocated_bytes is None and stats.precision == "32-true"


def test_round_trip_and_tolerant_reads(tmp_path):
    stats = TestStats(
        num_images=10,
        seconds=2.0,
        device="cuda:0",
        device_name="GPU",
        peak_rss_bytes=123,
        peak_cuda_allocated_bytes=456,
        peak_cuda_reserved_bytes=789,
        batch_size=5,
        precision="bf16-mixed",
    )
    write_test_stats(tmp_path, stats)
    assert read_test_stats(tmp_path) == stats and stats.images_per_s == 5.0
    assert TestStats(num_images=3, seconds=0.0).images_per_s is None
    assert read_test_stats(tmp_path / "missing") is None
    (tmp_path / TEST_STATS_FILE).write_text("{broken")
    assert read_test_stats(tmp_path) is None
    (tmp_path / TEST_STATS_FILE).write_text(
        json.dumps({"format": "anomaly_bench.test_stats", "num_images": 7})
    )
    partial = read_test_stats(tmp_path)  # older or partial files: what is there, defaults elsewhere
    assert partial.num_images == 7 and partial.seconds == 0.0 and partial.peak_rss_bytes is None
    assert peak_rss_bytes() > 0
