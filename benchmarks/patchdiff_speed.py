"""PatchDiff GRAD speed: detector inference (LOCO three-detector setup), generator training, sampling.

    python benchmarks/patchdiff_speed.py                     # GPU if available, paper sizes
    python benchmarks/patchdiff_speed.py --device cpu --quick

Paper (Table 3, V100): "latency 0.799 ms, 1251.6 FPS" for three detectors with inputs 256/128/64.
0.799 ms is exactly 1 / 1251.6 s: one throughput figure written two ways (the batch size is not
given), not a batch-1 latency. The comparable figure here is the throughput at a large batch
(images/s, and its reciprocal in ms per image); the batch-1 latency is printed too, but the paper
has no counterpart for it. fp32 and, on CUDA, bf16 autocast; then generator train steps/s and
sampling time per image for one PatchDiff level. Different GPUs (V100 vs ours) still differ.
"""

from __future__ import annotations

import argparse
import time

import torch

from anomaly_bench.models.patchdiff.torch_model import PAPER_DETECTORS_LOCO, PatchDiffCategoryModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def bench_detectors(device: torch.device, batch: int, repeats: int, amp: bool) -> dict[str, float]:
    detectors = [{"input_size": s.input_size, "levels": s.levels, "name": s.name} for s in PAPER_DETECTORS_LOCO]
    model = PatchDiffCategoryModel(detectors, generator_channels=8, blur_sigma=0.0).to(device).eval()
    n_params = sum(p.numel() for d in model.detectors for p in d.parameters())
    dtype = torch.bfloat16 if amp else torch.float32

    def run(images: torch.Tensor) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            model(images)

    one = torch.rand(1, 3, 256, 256, device=device) * 2 - 1
    many = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    latency = _time(lambda: run(one), device, repeats)
    per_batch = _time(lambda: run(many), device, max(3, repeats // 4))
    return {"params_M": n_params / 1e6, "latency_ms": latency * 1e3, "fps_batch": batch / per_batch}


def bench_generator(device: torch.device, level: int, channels: int, size: int, batch: int,
                    steps: int, samples: int, sampling_steps: int) -> dict[str, float]:
    from anomaly_bench.models.patchdiff.generator import PatchDiff

    gen = PatchDiff(level, channels).to(device)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3, weight_decay=1e-4)
    x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def step() -> None:
        loss = gen.training_loss(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    per_step = _time(step, device, steps, warmup=3)
    _sync(device)
    start = time.perf_counter()
    gen.sample(samples, size, size, sampler="ddpm", num_inference_steps=sampling_steps, device=device)
    _sync(device)
    sample_s = time.perf_counter() - start
    return {"train_steps_per_s": 1 / per_step, "sample_s_per_image": sample_s / samples,
            "sampling_steps": sampling_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="batch for the throughput figure")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="tiny numbers (CPU smoke run)")
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 9, 13, 17])
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.batch, args.repeats, args.levels = 4, 3, [5]
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print("paper (V100, three detectors 256/128/64, batch not given): throughput 1251.6 images/s "
          "= 0.799 ms per image, 8.7 M parameters")
    for amp in ([False, True] if device.type == "cuda" else [False]):
        r = bench_detectors(device, args.batch, args.repeats, amp)
        print(f"detectors {'bf16' if amp else 'fp32'}: {r['params_M']:.2f} M params, throughput (batch {args.batch}) "
              f"{r['fps_batch']:.1f} images/s = {1000.0 / r['fps_batch']:.3f} ms per image; latency of one "
              f"image alone (batch 1, no paper counterpart) {r['latency_ms']:.3f} ms")
    size = 64 if args.quick else 256
    for level in args.levels:
        r = bench_generator(device, level, 8 if args.quick else 64, size, 4 if args.quick else 16,
                            steps=3 if args.quick else 30, samples=2 if args.quick else 16,
                            sampling_steps=5 if args.quick else 1000)
        print(f"PatchDiff level {level} ({size} px): {r['train_steps_per_s']:.2f} train steps/s (batch "
              f"{4 if args.quick else 16}); sampling {r['sample_s_per_image']:.3f} s/image with "
              f"{r['sampling_steps']} DDPM steps")


if __name__ == "__main__":
    main()
