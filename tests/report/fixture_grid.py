"""A tiny grid output folder written with the real writers, no model trained.

Two methods x two categories (one unified cell per method and seed) x two seeds on a small
synthetic MVTec-layout dataset. Each "method" produces maps = quality * blurred mask + seeded
noise, so the better method has higher numbers; everything after the maps goes through the same
code the Evaluator and the callbacks use: ``category_result`` + ``write_tables`` (metrics),
``write_category_curves`` (curves), ``GalleryCollector`` (gallery), ``write_test_stats``, the
ScoreWriter's ``scores.csv`` columns, ``runs.run_info``.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from anomaly_bench import runs
from anomaly_bench.callbacks.gallery import GalleryCollector
from anomaly_bench.callbacks.scores import COLUMNS as SCORE_COLUMNS
from anomaly_bench.callbacks.test_stats import TestStats, write_test_stats
from anomaly_bench.data.io import read_mask
from anomaly_bench.metrics.curve_data import write_category_curves
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.report import ReportConfig, category_result, stable_id, with_mean_row, write_tables

CATEGORIES = ("bottle", "carpet")
DATASET = "synth_mvtec"
# name -> (model class path, paper method, quality of its maps); the grid lists crad first so the
# report must move the PatchCore reference row up itself
MODELS = {
    "crad": ("anomaly_bench.models.CRAD", "CRAD", 0.9),
    "patchcore": ("anomaly_bench.models.PatchCore", "PatchCore", 2.5),
}
SEEDS = (0, 1)


def write_data(root: Path) -> Path:
    """The synthetic dataset the fixture's methods are 'tested' on."""
    from anomaly_bench.data.synthetic import write_dataset

    from anomaly_bench.data.synthetic.writer import SYNTHETIC_MARKER

    write_dataset(
        "mvtec", root, categories=list(CATEGORIES), size=32, seed=0, train=1, test_good=4, per_defect=2
    )
    (root / SYNTHETIC_MARKER).unlink()  # the grid plays the real MVTec AD, so the paper rows apply
    return root


def test_images(data_root: Path, category: str) -> list[dict]:
    """(path, defect, label, mask path) of every test image of a category, sorted."""
    items = []
    for path in sorted((data_root / category / "test").glob("*/*.png")):
        defect = path.parent.name
        mask = data_root / category / "ground_truth" / defect / f"{path.stem}_mask.png"
        items.append(
            {
                "path": str(path),
                "defect": defect,
                "label": int(defect != "good"),
                "mask": str(mask) if mask.is_file() else None,
            }
        )
    return items


def _fake_map(item: dict, quality: float, rng: np.random.Generator) -> np.ndarray:
    truth = (
        (read_mask(item["mask"]) != 0).astype(np.float32) if item["mask"] else np.zeros((32, 32), np.float32)
    )
    signal = cv2.GaussianBlur(truth, (5, 5), 1.5)
    return (quality * signal + rng.normal(scale=0.35, size=truth.shape)).astype(np.float32) * 10.0 + 3.0


def write_cell(
    run_dir: Path, model: str, seed: int, data_root: Path, info: dict, grid_name: str, threshold: bool
) -> None:
    """One cell's run directory, as ``fit`` + ``test`` would leave it."""
    class_path, _, quality = MODELS[model]
    rng = np.random.default_rng([seed, zlib.crc32(model.encode())])
    config = ReportConfig()
    collector = GalleryCollector(per_class=3, seed=0, max_side=64)
    results, score_rows = [], []
    all_scores: list[float] = []
    for category in CATEGORIES:
        group = stable_id(category)
        images, pixels = ImageRankingMetric(), PixelRankingMetric()
        items = test_images(data_root, category)
        maps = [_fake_map(item, quality, rng) for item in items]
        scores = [float(m.max()) for m in maps]
        labels = [item["label"] for item in items]
        masks = [(read_mask(i["mask"]) != 0) if i["mask"] else np.zeros((32, 32), bool) for i in items]
        keys = [stable_id(i["path"]) for i in items]
        images.update(
            torch.tensor(scores), torch.tensor(labels), [0] * len(items), [group] * len(items), keys
        )
        pixels.update(
            [torch.from_numpy(m) for m in maps],
            masks=[torch.from_numpy(m) for m in masks],
            groups=[group] * len(items),
            keys=keys,
        )
        result = category_result(category, group, images, pixels, config)
        results.append(result)
        write_category_curves(run_dir, result, config.fpr_limit, config.spro_limits)
        for item, anomaly_map, score in zip(items, maps, scores):
            collector.offer(
                item["path"],
                category,
                item["defect"],
                item["label"],
                score,
                anomaly_map,
                (item["mask"],) if item["mask"] else (),
            )
            score_rows.append(
                {
                    "path": item["path"],
                    "category": category,
                    "defect": item["defect"],
                    "label": item["label"],
                    "pred_score": score,
                    "map_max": float(anomaly_map.max()),
                    "map_mean": float(anomaly_map.mean()),
                }
            )
        all_scores += scores
    extra = {"stage": "test", "modes_used": {c: "exact" for c in CATEGORIES}}
    if threshold:
        extra["thresholds"] = {"image": float(np.median(all_scores))}
    write_tables(with_mean_row([r.row for r in results]), run_dir, config, extra)
    collector.write(run_dir)
    with (run_dir / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(score_rows)
    n = len(score_rows)
    write_test_stats(
        run_dir,
        TestStats(
            num_images=n,
            seconds=n / (40.0 * quality),
            device="cpu",
            peak_rss_bytes=int(1.5e9 * quality),
            batch_size=8,
            precision="32-true",
        ),
    )
    (run_dir / "run_info_test.json").write_text(json.dumps(info, indent=2))
    cell_config = {
        "seed_everything": seed,
        "model": {"class_path": class_path, "init_args": {"lr": 0.01}},
        "data": {
            "class_path": "anomaly_bench.data.MVTecAD",
            "init_args": {"root": str(data_root), "category": "all", "image_size": 32},
        },
        "trainer": {"default_root_dir": str(run_dir), "max_epochs": 1},
    }
    (run_dir / "cell_config.yaml").write_text(yaml.safe_dump(cell_config, sort_keys=False))
    cell_id = f"{model}/{DATASET}/all/seed{seed}"
    status = {
        "cell_id": cell_id,
        "status": "done",
        "run_dir": str(run_dir),
        "device": "cpu",
        "fit_s": 12.0 / quality,
        "test_s": 3.0,
        "error": None,
        "tags": {
            "grid": grid_name,
            "cell_id": cell_id,
            "model": model,
            "dataset": DATASET,
            "category": "all",
            "setting": "unified",
            "seed": seed,
        },
    }
    (run_dir / "cell_status.json").write_text(json.dumps(status, indent=2))


def write_fixture_grid(
    output_dir: Path,
    data_root: Path,
    synthetic: bool = False,
    grid_yaml: bool = True,
    seeds: tuple[int, ...] = SEEDS,
) -> Path:
    """The grid output folder: ``grid.yaml`` (unless told not to) and
    ``cells/<model>/<dataset>/all/seed<k>/``.

    ``synthetic`` marks the dataset as a synthetic stand-in through the grid's ``synth:`` section.
    """
    grid = {
        "name": "fixture",
        "output_dir": str(output_dir),
        "models": [
            {"name": name, "class_path": class_path, "paper_method": method}
            for name, (class_path, method, _) in MODELS.items()
        ],
        "datasets": [
            {
                "name": DATASET,
                "class_path": "anomaly_bench.data.MVTecAD",
                "init_args": {"root": str(data_root)},
                "categories": "all",
                "paper_dataset": "MVTecAD",
            }
        ],
        "seeds": list(seeds),
    }
    if synthetic:
        grid["synth"] = [{"layout": "mvtec", "root": str(data_root), "size": 32}]
    output_dir.mkdir(parents=True, exist_ok=True)
    if grid_yaml:
        (output_dir / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    info = runs.run_info("test", [])
    for model in MODELS:
        for seed in seeds:
            run_dir = output_dir / "cells" / model / DATASET / "all" / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            write_cell(run_dir, model, seed, data_root, info, "fixture", threshold=model == "patchcore")
    return output_dir
