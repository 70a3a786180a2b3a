"""``BestAndLastCheckpoint`` ranks by the logged validation AUROC, and ``--ckpt_path best`` finds that
file (or ``last.ckpt`` when no epoch could be ranked). A scripted module logs known AUROC values."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from anomaly_bench import runs
from anomaly_bench.callbacks.checkpoint import BestAndLastCheckpoint


class ScriptedAUROC(LightningModule):
    """Logs ``val/image_auroc`` from a script, one value per epoch (None: not logged, as when the
    validation set holds normal images only)."""

    def __init__(self, script: list[float | None]) -> None:
        super().__init__()
        self.script = script
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self) -> None:
        value = self.script[self.current_epoch]
        if value is not None and not self.trainer.sanity_checking:
            self.log("val/image_auroc", value)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(run_dir: Path, script: list[float | None]) -> None:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    checkpoint = BestAndLastCheckpoint(dirpath=str(run_dir / runs.CHECKPOINT_DIR))
    trainer = Trainer(max_epochs=len(script), callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                      default_root_dir=str(run_dir))
    trainer.fit(ScriptedAUROC(script), loader, loader)


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def test_best_is_the_epoch_with_the_highest_validation_auroc_and_last_the_final_one(tmp_path: Path) -> None:
    _fit(tmp_path, [0.6, 0.9, 0.7, 0.8])
    best = runs.checkpoint_file(tmp_path, "best")
    assert best is not None and best.name == runs.BEST_CKPT
    assert _epoch(best) == 1  # 0.9, not the last epoch's 0.8
    assert _epoch(runs.checkpoint_file(tmp_path, "last")) == 3
    assert sorted(p.name for p in (tmp_path / runs.CHECKPOINT_DIR).iterdir()) == ["best.ckpt", "last.ckpt"]


def test_without_a_ranked_epoch_there_is_no_best_file_and_best_falls_back_to_last(tmp_path: Path) -> None:
    _fit(tmp_path, [None, None])  # normal-only validation: the AUROC is never logged
    assert not (tmp_path / runs.CHECKPOINT_DIR / runs.BEST_CKPT).exists()
    chosen = runs.checkpoint_file(tmp_path, "best")
    assert chosen is not None and chosen.name == runs.LAST_CKPT and _epoch(chosen) == 1
    assert runs.checkpoint_file(tmp_path / "nowhere", "best") is None
