"""PatchDiff GRAD on a synthetic MVTec-AD-layout set: pixel and image AUROC per category, and the maps.

    python benchmarks/patchdiff_synthetic_mvtec.py --seed 21                # ~15 min on 1 core per seed
    python benchmarks/patchdiff_synthetic_mvtec.py --seed 31 --work /tmp/pd31 --out /tmp/pd31/demo
    python benchmarks/patchdiff_synthetic_mvtec.py --seed 31 --work /tmp/pd31 --detectors one   # same samples

Four categories at 128 px like a held-out MVTec set: a woven texture (``weave``), a granite-like
speckle texture with thin 1 px scratches (``granite``, written here: no synthetic scene kind has a
texture that fine), a washer-like ring (``ring``) and a PCB-like board with missing / misplaced parts
(``board``). The demo config (``configs/demo/patchdiff.yaml``, written for the LOCO layout) keeps its
two detectors (``--detectors demo``) or takes the paper's MVTec AD setting of one level-34 detector
at the image size (``--detectors one``). It is fitted once through the real pipeline (generators ->
samples -> detectors -> statistics) and the test set is scored with the model's own rule. ``--work``
keeps the data and the generated images: a second run with the same folder and seed reuses the
samples (only the detectors train again), so ``--set`` compares detector options on the same samples.
``--out`` writes, per category, a PNG of input | ground truth | map rows, and the scores.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from anomaly_bench.data import MVTecAD
from anomaly_bench.data.synthetic import write_dataset
from anomaly_bench.models.patchdiff import PatchDiffGRAD
from patchdiff_synthetic_loco import run_pipeline  # noqa: E402  (benchmarks/ is on sys.path when run)

# our stand-ins for the held-out set's weave / granite / washer / pcb
CATEGORIES = ("weave", "granite", "ring", "board")
# the same trained detectors scored with: |z| per location (default since issue 15), signed z (0.1's
# default for several detectors) and raw logits (with one detector: the paper's rule)
RULES = ("pixel_deviation_sum", "pixel_standardized_sum", "sum")
SCENE_KINDS = ("weave", "ring", "board")  # drawn by anomaly_bench.data.synthetic
SIZE = 128


def write_granite(root: Path, seed: int, train: int, test_good: int, scratches: int) -> None:
    """A grey speckle texture with dark and light flecks; defects are thin (1 px) light or dark scratches.

    MVTec layout: ``granite/{train,test}/...`` and ``granite/ground_truth/scratch/<id>_mask.png``
    (the scratch dilated by one pixel, as an annotator would draw it).
    """
    rng = np.random.default_rng([seed, 7001])

    def noise(sigma: float) -> np.ndarray:
        field = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigma)
        return field / field.std()

    def texture() -> np.ndarray:
        speckle = 18 * noise(0.6) + 10 * noise(2.0)
        flecks = -60.0 * (noise(1.0) > 2.0) + 50.0 * (noise(1.0) > 2.2)
        tint = np.array([1.0, 0.95, 0.9], np.float32)
        return np.clip(np.array([150, 140, 135], np.float32) + (speckle + flecks)[..., None] * tint, 0, 255)

    def scratch(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        line = np.zeros((SIZE, SIZE), np.uint8)
        point, angle, length = rng.uniform(20, SIZE - 20, 2), rng.uniform(0, np.pi), rng.uniform(25, 50)
        points = [point]
        for _ in range(6):
            angle += rng.uniform(-0.3, 0.3)
            point = point + length / 6 * np.array([np.cos(angle), np.sin(angle)])
            points.append(point)
        cv2.polylines(line, [np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)], False, 1, thickness=1)
        out = image.copy()
        out[line > 0] = np.clip(out[line > 0] + rng.choice([-70.0, 70.0]), 0, 255)
        return out, cv2.dilate(line, np.ones((3, 3), np.uint8))

    folder = root / "granite"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, count in (("train/good", train), ("test/good", test_good)):
        for i in range(count):
            cv2.imwrite(str(folder / split / f"{i:03d}.png"), texture()[..., ::-1].astype(np.uint8))
    for i in range(scratches):
        image, mask = scratch(texture())
        cv2.imwrite(str(folder / "test/scratch" / f"{i:03d}.png"), image[..., ::-1].astype(np.uint8))
        cv2.imwrite(str(folder / "ground_truth/scratch" / f"{i:03d}_mask.png"), mask * 255)


def model_options(config: Path, detectors: str, work: Path, overrides: list[str]) -> dict:
    spec = yaml.safe_load(config.read_text())
    options = dict(spec["model"]["init_args"])
    if detectors == "one":
        levels = options["detectors"][0]["levels"]
        options["detectors"] = [{"name": "level34", "input_size": SIZE, "levels": levels}]
    options["generated_dir"] = str(work / "generated")
    for item in overrides:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    return options


def fit(options: dict, root: Path, work: Path, seed: int) -> tuple[PatchDiffGRAD, MVTecAD, float]:
    torch.manual_seed(seed)
    model = PatchDiffGRAD(**options)
    data = MVTecAD(root=str(root), category=list(CATEGORIES), image_size=SIZE, batch_size=8, eval_batch_size=16,
                   num_workers=0, train_augmentations=None)
    return model, data, run_pipeline(model, data, work)


@torch.no_grad()
def score(model: PatchDiffGRAD, data: MVTecAD) -> dict[str, np.ndarray]:
    """Every test image scored by every rule of ``RULES`` with the same trained detectors.

    Keys: image, mask, label, category, and ``map/<rule>``, ``score/<rule>``.
    """
    data.setup("test")
    model.eval()
    parts: dict[str, list] = {"image": [], "mask": [], "label": [], "category": []}
    for batch in data.test_dataloader():
        parts["image"].append(batch.image.numpy())
        parts["mask"].append(batch.mask.numpy())
        parts["label"].append(batch.label.numpy())
        parts["category"].append(np.array(batch.category))
        for rule in RULES:
            maps, scores = [], []
            for i, category in enumerate(batch.category):  # one image at a time: any mix of categories
                output = model.model.category(category).score(batch.image[i:i + 1], map_fusion=rule)
                maps.append(output.anomaly_map.float().numpy())
                scores.append(output.pred_score.float().numpy())
            parts.setdefault(f"map/{rule}", []).append(np.concatenate(maps))
            parts.setdefault(f"score/{rule}", []).append(np.concatenate(scores))
    return {k: np.concatenate(v) for k, v in parts.items()}


def aurocs(scored: dict[str, np.ndarray], rule: str) -> dict[str, tuple[float, float]]:
    """(image AUROC, pixel AUROC) per category for one rule."""
    out = {}
    for category in CATEGORIES:
        picked = scored["category"] == category
        image = binary_auroc(torch.from_numpy(scored[f"score/{rule}"][picked]).double(),
                             torch.from_numpy(scored["label"][picked]).long())
        pixel = binary_auroc(torch.from_numpy(scored[f"map/{rule}"][picked]).double().flatten(),
                             torch.from_numpy(scored["mask"][picked] > 0.5).long().flatten())
        out[category] = (float(image), float(pixel))
    return out


def print_table(scored: dict[str, np.ndarray]) -> None:
    print(f"{'category':10s}" + "".join(f"{rule + ' image/pixel':>34s}" for rule in RULES))
    tables = {rule: aurocs(scored, rule) for rule in RULES}
    for category in (*CATEGORIES, "mean"):
        cells = []
        for rule in RULES:
            values = tables[rule].values() if category == "mean" else [tables[rule][category]]
            image, pixel = np.mean([v[0] for v in values]), np.mean([v[1] for v in values])
            cells.append(f"{image:.3f} / {pixel:.3f}")
        print(f"{category:10s}" + "".join(f"{c:>34s}" for c in cells))


def save_panels(scored: dict[str, np.ndarray], out: Path, rule: str, per_category: int = 8) -> None:
    """Per category: rows of input | ground truth | map (map scaled to the category's score range)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        index = np.flatnonzero((scored["category"] == category) & (scored["label"] == 1))[:per_category]
        maps = scored[f"map/{rule}"][scored["category"] == category]
        low, high = np.percentile(maps, 1), np.percentile(maps, 99.9)
        rows = []
        for i in index:
            image = ((scored["image"][i].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255)
            mask = np.repeat(scored["mask"][i][..., None] * 255, 3, 2)
            heat = np.clip((scored[f"map/{rule}"][i] - low) / max(high - low, 1e-9), 0, 1)
            heat = np.stack([heat * 255, np.zeros_like(heat), (1 - heat) * 255], -1)
            rows.append(np.concatenate([image, mask, heat], 1))
        Image.fromarray(np.concatenate(rows, 0).astype(np.uint8)).save(out / f"{category}_{rule}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/demo/patchdiff.yaml"))
    parser.add_argument("--detectors", choices=("one", "demo"), default="one",
                        help="one level-34 detector at 128 px (MVTec setting) or the config's own detectors")
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic data (and of the fit)")
    parser.add_argument("--test-good", type=int, default=10)
    parser.add_argument("--per-defect", type=int, default=4, help="test images per defect type (3 types)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="override a model option of the config (YAML value), e.g. map_fusion=pixel_standardized_sum")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep data and generated images here (reused by a later run with the same seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the trained model, map panels (PNG) and the scores (npz) here")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the model saved in --out (same --work and --seed) again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("anomaly_bench.models.patchdiff").setLevel(logging.INFO)  # phases and the detail ratios
    if args.rescore and (args.out is None or args.work is None):
        parser.error("--rescore needs the --out folder of the saved model and its --work folder")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root = work / "mvtec"
        write_dataset("mvtec", root, categories=list(SCENE_KINDS), size=SIZE, seed=args.seed,
                      test_good=args.test_good, per_defect=args.per_defect)
        write_granite(root, args.seed, train=20, test_good=args.test_good, scratches=3 * args.per_defect)
        if args.rescore:
            saved = torch.load(args.out / "model.pt", map_location="cpu", weights_only=False)
            options, seconds = saved["options"], float("nan")
            model = PatchDiffGRAD(**options)
            model.model.load_state_dict({k[len("model."):]: v for k, v in saved["state_dict"].items()
                                         if k.startswith("model.")})
            data = MVTecAD(root=str(root), category=list(CATEGORIES), image_size=SIZE, eval_batch_size=16,
                           num_workers=0, normalization=PatchDiffGRAD.input_normalization)
        else:
            options = model_options(args.config, args.detectors, work, args.set)
            model, data, seconds = fit(options, root, work, args.seed)
        scored = score(model, data)
        if args.out is not None and not args.rescore:  # the trained model, to look at its maps later
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save({"options": options, "state_dict": model.state_dict()}, args.out / "model.pt")
    changed = " ".join(args.set) or "as configured"
    detectors = ", ".join(f"{d['input_size']} px" for d in options["detectors"])
    print(f"{args.config} (detectors {detectors}; {changed}) on synthetic MVTec layout ({SIZE} px, data seed "
          f"{args.seed}, {args.test_good} good + {args.per_defect} per defect type); fit {seconds:.0f} s")
    print_table(scored)
    if args.out is not None:
        for rule in RULES:
            save_panels(scored, args.out, rule)
        np.savez_compressed(args.out / "scores.npz", **scored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
