"""Epoch time of CRAD training with and without the frozen-feature cache.

The backbone is frozen and MVTec-style training uses no augmentation, so from the second epoch on
the features can come from memory instead of the backbone. This script trains the same model on
the same in-memory synthetic images twice (``feature_cache=none`` vs ``memory``) and prints the
wall time of every epoch.

    python benchmarks/crad_feature_cache.py                                  # tiny, CPU, seconds
    python benchmarks/crad_feature_cache.py --backbone tf_efficientnet_b4 --image-size 224 \
        --images 512 --batch-size 64 --epochs 3 --accelerator gpu --precision 16-mixed --channels-last

Random weights are used (``pretrained=False``): speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from anomaly_bench.models.crad import CRAD
from anomaly_bench.types import collate_items


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self.times.append(time.perf_counter() - self._start)


def synthetic_items(n: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        dict(image=torch.randn(3, size, size, generator=g), label=0, mask=torch.zeros(size, size),
             orig_size=(size, size), category="synthetic", defect="good", path=f"img_{i:05d}.png")
        for i in range(n)
    ]


def run(cache: str, args: argparse.Namespace, items: list[dict]) -> list[float]:
    L.seed_everything(0, verbose=False)
    model = CRAD(
        backbone=args.backbone, layers=args.layers, pretrained=False, image_size=args.image_size,
        fusion_blocks=args.fusion_blocks, feature_cache=cache, channels_last=args.channels_last,
        evaluator=False, visualizer=False,
    )
    model.configure_callbacks = lambda: []
    timer = EpochTimer()
    loader = DataLoader(items, batch_size=args.batch_size, shuffle=True, collate_fn=collate_items,
                        num_workers=args.num_workers)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=1, precision=args.precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, loader)
    return timer.times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fusion-blocks", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the cache only pays off from the second epoch)")

    items = synthetic_items(args.images, args.image_size)
    results = {mode: run(mode, args, items) for mode in ("none", "memory")}
    print(f"CRAD epoch time, backbone={args.backbone} image_size={args.image_size} images={args.images} "
          f"batch={args.batch_size} accelerator={args.accelerator} precision={args.precision} "
          f"channels_last={args.channels_last}")
    for mode, times in results.items():
        print(f"  feature_cache={mode:<6} " + "  ".join(f"epoch{i}: {t:7.3f}s" for i, t in enumerate(times)))
    steady_none = sum(results["none"][1:]) / (len(results["none"]) - 1)
    steady_mem = sum(results["memory"][1:]) / (len(results["memory"]) - 1)
    print(f"  epochs >= 1: {steady_none:.3f}s without cache, {steady_mem:.3f}s with cache "
          f"({steady_none / steady_mem:.2f}x faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "epoch_seconds": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
