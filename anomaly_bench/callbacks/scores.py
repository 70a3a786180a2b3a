"""Per-image scores as CSV: ``scores.csv`` after test, ``predictions.csv`` after predict."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from anomaly_bench.callbacks.distributed import gather_rows
from anomaly_bench.types import AnomalyOutput, Batch

COLUMNS = ["path", "category", "defect", "label", "pred_score", "map_max", "map_mean"]


class ScoreWriter(Callback):
    """Write one row per image with its raw image score (and map summaries) into the run directory.

    The CSV is what the benchmark grid and users' own analyses read; the metrics never depend on it.
    """

    def __init__(self, test_file: str = "scores.csv", predict_file: str = "predictions.csv") -> None:
        self.test_file = test_file
        self.predict_file = predict_file
        self._rows: list[dict[str, Any]] = []

    def _collect(self, outputs: AnomalyOutput, batch: Batch) -> None:
        if not isinstance(outputs, AnomalyOutput):
            return
        maps = outputs.anomaly_map.detach().float()
        scores = outputs.pred_score.detach().float().cpu().tolist()
        maxes = maps.flatten(1).amax(1).cpu().tolist()
        means = maps.flatten(1).mean(1).cpu().tolist()
        labels = batch.label.cpu().tolist()
        for i, path in enumerate(batch.path):
            self._rows.append({
                "path": path, "category": batch.category[i], "defect": batch.defect[i], "label": labels[i],
                "pred_score": scores[i], "map_max": maxes[i], "map_mean": means[i],
            })

    def _write(self, trainer: Any, name: str) -> None:
        rows = gather_rows(self._rows)
        self._rows = []
        if not trainer.is_global_zero or not rows:
            return
        path = Path(trainer.default_root_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: (r["category"], r["path"])))

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._rows = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, self.test_file)

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._rows = []

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, self.predict_file)
