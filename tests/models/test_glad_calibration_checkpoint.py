"""GLAD calibrates τ before the last epoch's validation, so ``last.ckpt`` (written after that
validation, before ``on_train_epoch_end``) and the validation itself use the calibrated τ."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from anomaly_bench.types import collate_items
from tests.models.test_glad_model import _toy_images, tiny_glad


def test_last_checkpoint_after_final_validation_holds_the_calibrated_tau(tmp_path: Path):
    g = torch.Generator().manual_seed(2)
    items = [dict(image=img, label=0, mask=torch.zeros(16, 16), orig_size=(16, 16), category="toy",
                  defect="good", path=f"n{i}") for i, img in enumerate(_toy_images(8, 16, g))]
    train = DataLoader(items, batch_size=4, collate_fn=collate_items)
    val = DataLoader(items[:4], batch_size=4, collate_fn=collate_items)
    module = tiny_glad()
    seen_at_validation: list[dict] = []
    module.on_validation_epoch_start = lambda: seen_at_validation.append(dict(module.calibrated_tau))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)  # saves after validation
    trainer = Trainer(max_epochs=2, check_val_every_n_epoch=2, num_sanity_val_steps=0, accelerator="cpu",
                      logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint],
                      default_root_dir=tmp_path)
    trainer.fit(module, train, val)
    assert seen_at_validation and set(seen_at_validation[-1]) == {"toy"}
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["state_dict"]["model._extra_state"]["calibrated_tau"] == module.calibrated_tau
    assert module.calibrated_tau["toy"] > 0
