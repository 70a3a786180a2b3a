"""Inference speed and peak memory of bi-grid GRAD (paper set-up: EfficientNet-B6, 256 px, C = 272,
local 32x32 / global 4x4 grids, 9 basic blocks per branch).

    python benchmarks/grad_speed.py                      # GPU if available, batch 1 and 32
    python benchmarks/grad_speed.py --batch-sizes 1 --autocast bf16
    python benchmarks/grad_speed.py --tiny --device cpu  # smoke test without the real backbone size

Weights are random (``pretrained=False``): speed and memory do not depend on them. The timed region
is ``BiGridGRAD.forward`` (backbone, both branches, fusion, refinement, upsampling, box filters and
image scores); the images are already on the device. Paper claims: ~75 FPS and 4.8 GB on GoodsAD
(ICME), 10.2 FPS and 634 MB at batch 1 on an RTX 4090 (TIP).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time

import torch

from anomaly_bench.models.grad import BiGridGRAD


def build(tiny: bool, image_size: int) -> BiGridGRAD:
    if tiny:
        return BiGridGRAD(backbone="tiny", pretrained=False, image_size=64, local_resolution=8,
                          global_resolution=2, fusion_blocks=2, evaluator=False, visualizer=False)
    return BiGridGRAD(pretrained=False, image_size=image_size, evaluator=False, visualizer=False)


def measure(module: BiGridGRAD, batch_size: int, image_size: int, iters: int, warmup: int,
            device: torch.device, autocast: str) -> tuple[float, float]:
    """Return (images per second, peak memory in MiB) for ``iters`` timed forward passes."""
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    cuda = device.type == "cuda"
    with torch.inference_mode(), amp:
        for _ in range(warmup):
            module(images)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(iters):
            module(images)
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)
    return batch_size * iters / elapsed, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--tiny", action="store_true", help="tiny random backbone (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    image_size = 64 if args.tiny else args.image_size
    module = build(args.tiny, image_size).to(device).eval()
    params = sum(p.numel() for p in module.parameters()) / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"bi-grid GRAD, {params:.1f} M parameters, {image_size} px, "
          f"autocast={args.autocast}, device={name}")
    print(f"{'batch':>6} {'images/s':>10} {'ms/image':>9} {'peak MiB':>9}")
    for batch_size in args.batch_sizes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        ips, peak = measure(module, batch_size, image_size, args.iters, args.warmup, device, args.autocast)
        print(f"{batch_size:>6} {ips:>10.1f} {1000 / ips:>9.2f} {peak:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
