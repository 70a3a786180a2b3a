"""Epoch time of a training dataloader with and without the decoded-image cache.

Writes a synthetic dataset (default: GoodsAD-like JPEGs at 512 px, 40 training images), then
iterates the training loader for a few epochs with ``cache="none"``, ``"memory"`` and ``"disk"``
and prints the seconds per epoch. The first cached epoch decodes (and fills the cache); later
epochs should decode nothing.

    python benchmarks/data_cache_speed.py [--layout goodsad] [--size 768] [--train 60]
        [--image-size 256] [--epochs 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from anomaly_bench.data import GoodsAD, MPDD, MVTecAD, MVTecLOCO, VisA
from anomaly_bench.data.synthetic import write_dataset

DATAMODULES = {"mvtec": MVTecAD, "mpdd": MPDD, "goodsad": GoodsAD, "visa": VisA, "visa-raw": VisA, "loco": MVTecLOCO}


def epoch_times(cls, root: Path, cache: str, cache_dir: Path, args: argparse.Namespace) -> list[float]:
    dm = cls(root=root, image_size=args.image_size, batch_size=16, num_workers=args.workers,
             cache=cache, cache_dir=cache_dir if cache == "disk" else None, validation="none")
    dm.setup("fit")
    loader = dm.train_dataloader()
    times = []
    for _epoch in range(args.epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="goodsad", choices=sorted(DATAMODULES))
    parser.add_argument("--size", type=int, default=512, help="image size on disk")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=256, help="model input size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    # DataLoader workers run torch single-threaded; do the same in the main process so that the
    # collate step does not measure thread-pool contention on a busy machine
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        write_dataset(args.layout, root, categories=["ring"], size=args.size, train=args.train, test_good=1, per_defect=1)
        print(f"wrote {args.train} training images of {args.size}px ({args.layout}) in {time.perf_counter() - start:.1f}s")
        print(f"model size {args.image_size}px, {args.workers} workers, {args.epochs} epochs")
        results = {}
        for cache in ("none", "memory", "disk"):
            results[cache] = epoch_times(DATAMODULES[args.layout], root, cache, Path(tmp) / "cache", args)
            print(f"cache={cache:6s} epoch times: " + ", ".join(f"{t:.3f}s" for t in results[cache]))
        later_none = sum(results["none"][1:]) / max(len(results["none"]) - 1, 1)
        later_mem = sum(results["memory"][1:]) / max(len(results["memory"]) - 1, 1)
        print(f"epochs after the first: {later_none:.3f}s without cache, {later_mem:.3f}s with the memory cache "
              f"({later_none / max(later_mem, 1e-9):.1f}x faster)")
        fresh_disk = epoch_times(DATAMODULES[args.layout], root, "disk", Path(tmp) / "cache", args)
        print(f"a new run reading the warm disk cache: first epoch {fresh_disk[0]:.3f}s "
              f"(vs {results['none'][0]:.3f}s decoding)")


if __name__ == "__main__":
    main()
