"""Why a trained GLAD scores as it does: ADS decisions and alternative scorers on its reconstructions.

    python benchmarks/glad_diagnostics.py --run <run dir of a GLAD fit> --root <MVTec-layout data>

For every test image of ``--root`` (128 px by default) it reconstructs once, as ``GLADModel.forward``
does, and reports per category:

* the ADS peak score's AUROC (how well the in-loop drift alone tells anomalous from normal images),
  the calibrated τ and the share of anomalous images whose peak exceeds it (those get SAFF; all
  others are re-anchored to their input below t_min);
* image / pixel AUROC of the shipped map (random-ViT nearest-neighbour distances) and, on the same
  reconstructions, of a random resnet18 (stages 1-2, the PatchCore demo's features) with the same
  nearest-neighbour rule and of the plain pixel L1 difference;
* the UNet's noise-prediction error on the normal test images at the DDIM steps the demo visits
  (ε MSE and the RMS error it leaves in a one-step clean estimate, sqrt((1 - ᾱ)/ᾱ · MSE)): a UNet
  narrower than its latent has a floor here that no training removes.

Used for the "Why, measured" figures of ``anomaly_bench/models/glad/README.md``; nothing here is
shipped as a scorer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from anomaly_bench.data import MVTecAD  # noqa: E402
from anomaly_bench.metrics.functional import image_auroc, pixel_auroc  # noqa: E402
from anomaly_bench.models import GLAD  # noqa: E402
from anomaly_bench.models.glad.scoring import gaussian_blur, imagenet_normalize, nn_distance, topk_mean  # noqa: E402


def resnet_tokens(cnn: torch.nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Stage-1 and stage-2 features (3x3 averaged, stage 2 upsampled to stage 1's grid) as [B, N, C] tokens."""
    f1, f2 = cnn(imagenet_normalize(images))
    f2 = F.interpolate(f2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
    grid = tuple(f1.shape[-2:])
    return [F.avg_pool2d(f, 3, 1, 1).flatten(2).transpose(1, 2) for f in (f1, f2)], grid


@torch.no_grad()
def print_noise_prediction_error(model, data: MVTecAD, steps: tuple[int, ...] = (76, 226, 526), limit: int = 32) -> None:
    """ε MSE of the UNet on up to ``limit`` normal test images, noised at each of ``steps``."""
    found: list[torch.Tensor] = []
    for batch in data.test_dataloader():
        found.append(batch.image[batch.label == 0])
        if sum(len(f) for f in found) >= limit:
            break
    normals = torch.cat(found)[:limit]
    latents = model.codec.encode(normals, sample=False).float()
    generator = torch.Generator().manual_seed(0)
    for t in steps:
        noise = torch.randn(latents.shape, generator=generator)
        alpha_bar = model.alphas_cumprod[t]
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        mse = float(((model.predict_noise(noisy, t) - noise) ** 2).mean())
        rms = float(((1 - alpha_bar) / alpha_bar).sqrt()) * mse ** 0.5
        print(f"noise prediction at t={t} (alpha_bar {float(alpha_bar):.3f}), {normals.shape[0]} normal test images: "
              f"eps MSE {mse:.3f}, clean-estimate error RMS {rms:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a GLAD run directory (holds checkpoints/last.ckpt)")
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout data root")
    parser.add_argument("--category", default="all", help="one category of the data, or all")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--noise-only", action="store_true", help="print the noise-prediction error only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoints = sorted(args.run.rglob("checkpoints/last.ckpt"))
    if not checkpoints:
        raise SystemExit(f"no checkpoints/last.ckpt under {args.run}")
    model = GLAD.load_from_checkpoint(checkpoints[0], map_location="cpu").eval().model
    data = MVTecAD(root=str(args.root), category=args.category, image_size=args.image_size, eval_batch_size=16,
                   normalization="minus_one_one", validation="none")
    data.setup("test")
    print_noise_prediction_error(model, data)
    if args.noise_only:
        return
    import timm

    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2)).eval()
    scorers = ("shipped (random ViT)", "random resnet18 NN", "pixel L1")
    rows: dict[str, dict[str, list]] = {}
    for batch in data.test_dataloader():
        images, names = batch.image, list(batch.category)
        with torch.no_grad():
            params = [model.params_for(c) for c in names]
            recon, _ = model.reconstruct_categories(images, params, torch.Generator().manual_seed(model.inference_seed))
            size = images.shape[-2:]
            shipped = model.anomaly_map(images, recon)
            maps = {scorers[0]: F.interpolate(shipped[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]}
            tokens_in, grid = resnet_tokens(cnn, images)
            tokens_re, _ = resnet_tokens(cnn, recon)
            total = torch.zeros(images.shape[0], *size)
            for t_in, t_re in zip(tokens_in, tokens_re):
                d = nn_distance(t_in, t_re).reshape(-1, 1, *grid)
                total += F.interpolate(d, size=size, mode="bilinear", align_corners=True)[:, 0]
            maps[scorers[1]] = gaussian_blur(total, model.blur_sigma)
            maps[scorers[2]] = gaussian_blur((images - recon).abs().mean(1), model.blur_sigma)
            peaks = torch.empty(images.shape[0])
            for category in sorted(set(names)):
                idx = [i for i, c in enumerate(names) if c == category]
                peaks[idx] = model.ads_peak_scores(images[idx], category, torch.Generator().manual_seed(0))
        masks = batch.mask if batch.mask.ndim == 3 else batch.mask[:, 0]
        for i, category in enumerate(names):
            row = rows.setdefault(category, {"label": [], "peak": [], "mask": [], "score": {k: [] for k in scorers},
                                             "map": {k: [] for k in scorers}})
            row["label"].append(int(batch.label[i]))
            row["peak"].append(float(peaks[i]))
            row["mask"].append((masks[i] > 0.5).numpy())
            for k in scorers:
                row["score"][k].append(float(topk_mean(maps[k][i:i + 1], model.score_top_k)))
                row["map"][k].append(maps[k][i].numpy())
    print(f"GLAD run {args.run}, data {args.root}")
    means: dict[str, list[tuple[float, float]]] = {k: [] for k in scorers}
    for category, row in sorted(rows.items()):
        labels = np.array(row["label"])
        peaks = np.array(row["peak"])
        tau = model.params_for(category)["tau"]
        fired = float((peaks[labels == 1] > tau).mean())
        print(f"{category}: ADS peak AUROC {image_auroc(peaks, labels):.3f}, tau {tau:.3f}, "
              f"anomalous images above tau {100 * fired:.0f} %")
        for k in scorers:
            image = image_auroc(np.array(row["score"][k]), labels)
            pixel = pixel_auroc(np.stack(row["map"][k]), np.stack(row["mask"]))
            means[k].append((image, pixel))
            print(f"  {k:22s} image {image:.3f} pixel {pixel:.3f}")
    for k, values in means.items():
        print(f"mean {k:22s} image {np.mean([v[0] for v in values]):.3f} pixel {np.mean([v[1] for v in values]):.3f}")


if __name__ == "__main__":
    main()
