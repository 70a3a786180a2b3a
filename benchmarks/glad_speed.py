"""GLAD inference speed and peak memory, with and without Adaptive Denoising Steps.

Random weights (nothing to download), real architectures: ``--preset sd-v1-random`` is the Stable
Diffusion v1-4 UNet + VAE with DINO ViT-B/8 (the paper's set-up, 512 px); ``--preset tiny`` is the
test/demo configuration. ADS is timed in its worst case (τ = ∞: every image searches until t_min),
so the "ADS" row is an upper bound on its cost; "no ADS" is a plain fixed-step DDIM reconstruction.

    python benchmarks/glad_speed.py --preset tiny --device cpu
    python benchmarks/glad_speed.py --preset sd-v1-random --device cuda --batch 8 --amp bf16
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from anomaly_bench.models.glad.dino import DINO_VITB8
from anomaly_bench.models.glad.torch_model import GLADModel

AMP_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(preset: str, image_size: int, steps: int) -> GLADModel:
    if preset == "tiny":
        return GLADModel(diffusion="tiny", tiny_image_size=image_size, unet_width=16, dino="tiny",
                         dino_pretrained=False, guidance_scale=1.0, num_inference_steps=steps,
                         score_layers=(1, 2, 3, 4), ads_layer=4, ads_top_k=3, score_top_k=16,
                         dino_resolution=image_size, blur_sigma=1.0)
    return GLADModel(diffusion="sd-v1-random", dino=DINO_VITB8, dino_pretrained=False, guidance_scale=9.0,
                     num_inference_steps=steps, dino_resolution=image_size)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def run(model: GLADModel, images: torch.Tensor, t_start: int, t_min: int, use_ads: bool, amp: torch.dtype | None,
        repeats: int) -> tuple[float, float, int]:
    device = images.device
    n = images.shape[0]
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    tau, tmin = torch.full((n,), float("inf")), torch.full((n,), t_min)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    searched = 0
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        for _ in range(repeats):
            recon = model.reconstruct(images, t_start, tau, tmin, use_ads=use_ads,
                                      generator=torch.Generator().manual_seed(0))
            maps = model.anomaly_map(images, recon.images)
            model.image_score(maps)
            searched = recon.ads.searched_steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return n * repeats / elapsed, peak_memory_mib(device), searched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "sd-v1-random"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 (tiny) / 512 (sd-v1-random)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps K")
    parser.add_argument("--t-start", type=int, default=750)
    parser.add_argument("--t-min", type=int, default=350)
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    size = args.image_size or (32 if args.preset == "tiny" else 512)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.preset, size, args.steps).to(device).eval()
    images = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    amp = AMP_DTYPES[args.amp]
    run(model, images, args.t_start, args.t_min, True, amp, 1)  # warm-up (kernels, allocator)
    print(f"GLAD speed: preset={args.preset} device={device} size={size} batch={args.batch} K={args.steps} "
          f"T_start={args.t_start} t_min={args.t_min} amp={args.amp}")
    print(f"{'mode':<28}{'images/s':>10}{'peak MiB':>11}{'searched steps':>16}")
    for label, use_ads in (("no ADS (fixed-step DDIM)", False), ("ADS (worst case, tau=inf)", True)):
        throughput, peak, searched = run(model, images, args.t_start, args.t_min, use_ads, amp, args.repeats)
        print(f"{label:<28}{throughput:>10.3f}{peak:>11.0f}{searched:>16d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
