"""Time and peak memory of pixel AUROC + AP + AU-PRO (one pass) for 10 M and 100 M pixels.

    python benchmarks/metrics_speed.py                      # 10M and 100M, exact and binned
    python benchmarks/metrics_speed.py --pixels 10M --threads 2

Each case runs in a fresh child process so its peak RSS is its own. Maps: i.i.d. normal noise
with a +1.5 shift inside 1-3 random discs on half the images (~1 % positive pixels); maps are
already at evaluation resolution (no resize is timed). "regions" is the one-off connected-component
labelling of the masks (cached per mask in real runs). anomalib's AUPRO runs too when anomalib is
importable (optional, not a dependency).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    try:  # "5" resets VmHWM to the current RSS, so the next peak is the computation's own
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _make_data(num_pixels: int, side: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_images = max(1, num_pixels // (side * side))
    maps = rng.standard_normal((n_images, side, side), dtype=np.float32)
    masks = np.zeros((n_images, side, side), np.uint8)
    yy, xx = np.ogrid[:side, :side]
    for i in range(n_images // 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, side, 2)
            r = rng.integers(side // 60 + 2, side // 12 + 3)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    maps += 1.5 * (masks != 0)
    return maps, masks


def run_case(pixels: int, mode: str, side: int, threads: int, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    from anomaly_bench.metrics.ground_truth import ground_truth_from_mask
    from anomaly_bench.metrics.pixel import BinningConfig, PixelImage, evaluate_pixels

    maps, masks = _make_data(pixels, side)
    tensors = torch.from_numpy(maps)
    _reset_peak()
    base_rss = _status_mb("VmRSS")
    start = time.perf_counter()
    if mode == "anomalib":
        from anomalib.metrics import AUPRO  # optional

        metric = AUPRO(fpr_limit=0.3)
        metric.update(tensors, torch.from_numpy(masks != 0).long())
        values = {"aupro": float(metric.compute())}
        regions_s = 0.0
    else:
        truths = [ground_truth_from_mask(m) for m in masks]
        regions_s = time.perf_counter() - start
        start = time.perf_counter()
        images = [PixelImage(tensors[i], truth) for i, truth in enumerate(truths)]
        curves = evaluate_pixels(images, None, BinningConfig(mode=mode, exact_max_pixels=10**12), device)["all"]
        values = {"auroc": curves.auroc(), "ap": curves.average_precision(), "aupro": curves.aupro(0.3)}
    seconds = time.perf_counter() - start
    return {"pixels": int(maps.size), "mode": mode if device == "cpu" else f"{mode}@{device}", "regions_s": round(regions_s, 3), "metrics_s": round(seconds, 3),
            "peak_rss_mb": round(_status_mb("VmHWM"), 1), "rss_above_data_mb": round(_status_mb("VmHWM") - base_rss, 1),
            "data_mb": round((maps.nbytes + masks.nbytes) / 2**20, 1), **{k: round(v, 6) for k, v in values.items()}}


def _parse_pixels(text: str) -> int:
    text = text.upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KMG" else text) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", nargs="+", default=["10M", "100M"])
    parser.add_argument("--modes", nargs="+", default=["binned", "exact", "anomalib"])
    parser.add_argument("--side", type=int, default=1000, help="image side (pixels per image = side^2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the sort / counting runs (cpu, cuda)")
    parser.add_argument("--case", nargs=2, metavar=("PIXELS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(_parse_pixels(args.case[0]), args.case[1], args.side, args.threads, args.device)))
        return 0
    try:
        import anomalib  # noqa: F401
    except Exception:
        args.modes = [m for m in args.modes if m != "anomalib"]
    print(f"{'pixels':>11} {'mode':>12} {'regions s':>9} {'metrics s':>9} {'peak MB':>8} {'above data MB':>13}  values")
    for pixels in args.pixels:
        for mode in args.modes:
            command = [sys.executable, __file__, "--case", pixels, mode, "--side", str(args.side), "--threads", str(args.threads),
                       "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{pixels:>11} {mode:>12} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            values = {k: r[k] for k in ("auroc", "ap", "aupro") if k in r}
            print(f"{r['pixels']:>11,} {r['mode']:>12} {r['regions_s']:>9.2f} {r['metrics_s']:>9.2f} {r['peak_rss_mb']:>8.0f} "
                  f"{r['rss_above_data_mb']:>13.0f}  {values}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
