"""PatchDiff GRAD on a larger synthetic MVTec LOCO set: image AUROC per category, per anomaly group, per fusion.

    python benchmarks/patchdiff_synthetic_loco.py                         # demo config, ~7 min on 2 cores
    python benchmarks/patchdiff_synthetic_loco.py --config configs/demo/patchdiff.yaml --test-good 20 --per-defect 5

The demo test judges the demo config on the default synthetic set (6 good + 12 anomalous test
images per category), which is too small to compare settings. This script writes the same
synthetic layout with more test images, fits the config once through the real pipeline
(generators -> samples -> detectors -> statistics) and scores the test set with every fusion rule
of the *same* trained detectors, so the fusion comparison is free of training noise.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch import Trainer
from torchmetrics.functional.classification import binary_auroc

from anomaly_bench.data import MVTecLOCO
from anomaly_bench.data.synthetic import write_dataset
from anomaly_bench.models.patchdiff import PatchDiffGRAD

FUSIONS = [("pixel_deviation_sum", "max_of_map"), ("pixel_standardized_sum", "max_of_map"),
           ("standardized_sum", "sum_of_max"), ("sum", "max_of_map")]
GROUPS = ("logical_anomalies", "structural_anomalies")


def fit(config: Path, root: Path, work: Path) -> tuple[PatchDiffGRAD, MVTecLOCO, float]:
    spec = yaml.safe_load(config.read_text())
    model_args = dict(spec["model"]["init_args"])
    model_args.update(generated_dir=str(work / "generated"))
    data_args = dict(spec["data"]["init_args"])
    data_args.update(root=str(root), category="all", num_workers=0)
    torch.manual_seed(int(spec.get("seed_everything", 0)))
    model = PatchDiffGRAD(**model_args)
    data = MVTecLOCO(**data_args)
    return model, data, run_pipeline(model, data, work)


def run_pipeline(model: PatchDiffGRAD, data, work: Path) -> float:
    """Fit ``model`` on ``data`` until its last phase ends, without callbacks or a run folder (the
    scripts score the test set themselves); the wall seconds."""
    model.configure_callbacks = list
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1_000_000, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=str(work))
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    if not model.pipeline_done:
        raise RuntimeError("the PatchDiff pipeline did not finish; raise max_epochs")
    return time.perf_counter() - start


def auroc(labels: list[int], scores: list[float]) -> float:
    return float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))


@torch.no_grad()
def score(model: PatchDiffGRAD, data: MVTecLOCO) -> dict[str, dict[str, float]]:
    """AUROC per (fusion, image score) -> {category, category/group} -> value."""
    data.setup("test")
    model.eval()
    rows: list[tuple[str, str, int, list[float]]] = []
    for batch in data.test_dataloader():
        for i, category in enumerate(batch.category):
            image = batch.image[i:i + 1]
            scores = [float(model.model.category(category).score(image, 1.0, fusion, rule).pred_score)
                      for fusion, rule in FUSIONS]
            rows.append((category, Path(batch.path[i]).parent.name, int(batch.label[i]), scores))
    results: dict[str, dict[str, float]] = {}
    for f, (fusion, rule) in enumerate(FUSIONS):
        table: dict[str, float] = {}
        for category in sorted({r[0] for r in rows}):
            picked = [r for r in rows if r[0] == category]
            table[category] = auroc([r[2] for r in picked], [r[3][f] for r in picked])
            for group in GROUPS:
                sub = [r for r in picked if r[1] in (group, "good")]
                table[f"{category}/{group.split('_')[0]}"] = auroc([r[2] for r in sub], [r[3][f] for r in sub])
        table["mean"] = float(np.mean([v for k, v in table.items() if "/" not in k]))
        results[f"{fusion}+{rule}"] = table
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/demo/patchdiff.yaml"))
    parser.add_argument("--root", type=Path, default=None, help="synthetic data folder (written when absent)")
    parser.add_argument("--size", type=int, default=128, help="synthetic image height on disk")
    parser.add_argument("--test-good", type=int, default=20)
    parser.add_argument("--per-defect", type=int, default=5, help="test images per defect type (4 types)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    # the model logs each phase change (generator -> sample -> detectors -> stats): timestamps show where time goes
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("anomaly_bench.models.patchdiff").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = args.root or work / "loco"
        if not root.exists():
            write_dataset("loco", root, size=args.size, seed=args.seed, test_good=args.test_good,
                          per_defect=args.per_defect)
        model, data, seconds = fit(args.config, root, work)
        results = score(model, data)
    print(f"{args.config} on synthetic LOCO ({args.size} px, {args.test_good} good + {args.per_defect} per defect "
          f"type per category, data seed {args.seed}); fit {seconds:.0f} s on {args.threads} threads")
    columns = list(next(iter(results.values())))
    print(f"{'fusion + image score':40s}" + "".join(f"{c:>20s}" for c in columns))
    for name, table in results.items():
        print(f"{name:40s}" + "".join(f"{table[c]:20.3f}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
