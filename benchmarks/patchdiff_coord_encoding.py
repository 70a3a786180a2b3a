"""Does a PatchDiff learn *where* things go? Raw coordinate map vs its Fourier encoding.

    python benchmarks/patchdiff_coord_encoding.py                 # CPU, ~5 min on 2 cores
    python benchmarks/patchdiff_coord_encoding.py --steps 3000 --out benchmarks/results/pd_coords

A level-n PatchDiff sees only an n x n window, so everything beyond the window (grid borders,
socket positions, connector slots) must come from the coordinate channels. We train the same
denoiser on the synthetic MVTec LOCO categories with ``coord_frequencies`` 0 (the raw 2-channel
map) and 6 (our default), sample with DDIM and print the *layout error*: the mean absolute
difference (0-255 scale) between the per-pixel mean of the samples and of the training images.
``position-blind`` is the error of an image that has the right colours everywhere but no layout
(the training mean's spatial average) -- a generator that ignores the coordinates scores about that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_bench.data.io import decode_image
from anomaly_bench.data.synthetic import write_dataset
from anomaly_bench.models.patchdiff.generator import PatchDiff, coordinate_map
from anomaly_bench.models.patchdiff.patches import random_crops
from anomaly_bench.models.patchdiff.schedule import one_cycle_lr


def load_normals(root: Path, category: str, size: int) -> torch.Tensor:
    paths = sorted((root / category / "train" / "good").glob("*.png"))
    images = np.stack([decode_image(p, (size, size))[0] for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train(images: torch.Tensor, level: int, channels: int, frequencies: int, steps: int, batch: int,
          crop: int, lr: float, seed: int) -> PatchDiff:
    torch.manual_seed(seed)
    model = PatchDiff(level, channels, coord_frequencies=frequencies)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    coords = coordinate_map(*images.shape[-2:]).expand(batch, -1, -1, -1)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(step, steps, lr)
        x0 = images[torch.randint(0, images.shape[0], (batch,))]
        crops = random_crops(torch.cat([x0, coords], 1), 1, crop)
        loss = model.training_loss(crops[:, :3], crops[:, 3:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def layout_error(samples: torch.Tensor, images: torch.Tensor) -> float:
    return float((samples.mean(0) - images.mean(0)).abs().mean() * 127.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["pins", "cables"])
    parser.add_argument("--size", type=int, default=64, help="training/sampling resolution")
    parser.add_argument("--level", type=int, default=9)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=24, help="random-crop training (exact for a local model)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--frequencies", type=int, nargs="+", default=[0, 6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="save sample grids (PNG) here")
    args = parser.parse_args(argv)

    print(f"level-{args.level} PatchDiff, {args.channels} ch, {args.steps} steps x batch {args.batch} "
          f"({args.crop} px crops), DDIM {args.sampling_steps}, {args.samples} samples at {args.size} px")
    print(f"{'category':10s} {'frequencies':>11s} {'layout error':>13s} {'position-blind':>15s} {'train s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset("loco", root, categories=args.categories, seed=args.seed, test_good=0, per_defect=0)
        for category in args.categories:
            images = load_normals(root, category, args.size)
            mean_image = images.mean(0)
            blind = float((mean_image - mean_image.mean(dim=(1, 2), keepdim=True)).abs().mean() * 127.5)
            for frequencies in args.frequencies:
                start = time.perf_counter()
                model = train(images, args.level, args.channels, frequencies, args.steps, args.batch, args.crop,
                              args.lr, args.seed)
                seconds = time.perf_counter() - start
                rng = torch.Generator().manual_seed(args.seed)
                samples = model.sample(args.samples, args.size, args.size, "ddim", args.sampling_steps, "cpu", rng)
                print(f"{category:10s} {frequencies:>11d} {layout_error(samples, images):>13.2f} {blind:>15.2f} "
                      f"{seconds:>8.1f}", flush=True)
                if args.out is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    grid = ((samples[:8] + 1) * 127.5).clamp(0, 255).byte().permute(2, 0, 3, 1).flatten(1, 2)
                    from PIL import Image

                    Image.fromarray(grid.numpy()).save(args.out / f"{category}_freq{frequencies}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
