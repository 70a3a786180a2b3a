"""Bi-grid GRAD: should stage B keep training the shared coordinate mapper? (issue 16)

The mapper places the samples of *both* grid pairs. Stage A fits the abnormal grid to the mapper's
coordinates; if stage B keeps training the mapper, those coordinates move under the frozen abnormal
grid. This fits the same GRAD config with ``train_mapper_in_normal_stage`` true and false on
synthetic GoodsAD-layout data of seeds the config was not tuned on, through the real CLI, and
prints the mean image / pixel AUROC of each (the choice of the default rests on it).

    python benchmarks/grad_stage_b_mapper.py --config configs/demo/grad.yaml --seeds 1 2 \
        --out benchmarks/results/grad_stage_b_mapper.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from anomaly_bench.cli import main as cli
from anomaly_bench.data.synthetic import write_dataset
from anomaly_bench.metrics.report import read_tables


def run(config: Path, root: Path, results: Path, train_mapper: bool) -> dict[str, float]:
    # GoodsAD layout whatever the config's datamodule (the demo config reads MVTec AD since issue 15)
    args = ["--config", str(config), "--data", "anomaly_bench.data.GoodsAD", "--data.init_args.root", str(root), "--trainer.default_root_dir", str(results),
            "--trainer.enable_progress_bar", "false", "--model.init_args.train_mapper_in_normal_stage",
            str(train_mapper).lower(), "--run_dir", str(results / ("trained" if train_mapper else "frozen"))]
    cli(["fit", *args])
    cli(["test", *args, "--ckpt_path", "last"])
    rows, _ = read_tables(results / ("trained" if train_mapper else "frozen"))
    mean = next(r for r in rows if r["category"] == "mean")
    return {"image_auroc": float(mean["image_auroc"]), "pixel_auroc": float(mean["pixel_auroc"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/demo/grad.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="synthetic data seeds (not tuned on)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the config's data size)")
    parser.add_argument("--out", type=Path, default=None, help="write the table (Markdown) and JSON here")
    args = parser.parse_args(argv)
    import yaml

    data_size = args.size or yaml.safe_load(args.config.read_text())["data"]["init_args"]["image_size"]
    figures: dict[str, list[dict[str, float]]] = {"trained": [], "frozen": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = Path(tmp) / f"goodsad_{seed}"
            write_dataset("goodsad", root, size=int(data_size), seed=seed, train=30, test_good=20, per_defect=10)
            for train_mapper in (True, False):
                start = time.time()
                result = run(args.config, root, Path(tmp) / f"results_{seed}", train_mapper)
                result["seconds"] = time.time() - start
                figures["trained" if train_mapper else "frozen"].append({"seed": seed, **result})
                print(f"seed {seed} mapper {'trained' if train_mapper else 'frozen '} in stage B: "
                      f"image AUROC {result['image_auroc']:.3f}, pixel AUROC {result['pixel_auroc']:.3f} "
                      f"({result['seconds']:.0f} s)", flush=True)
    lines = [f"# Bi-grid GRAD: the shared mapper in stage B ({args.config}, GoodsAD layout, {data_size} px)", "",
             "| stage B | " + " | ".join(f"seed {s} image / pixel AUROC" for s in args.seeds) + " | mean image | mean pixel |",
             "|---|" + "---|" * (len(args.seeds) + 2)]
    for name, runs in figures.items():
        cells = [f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.3f}" for r in runs]
        lines.append(f"| mapper {name} | " + " | ".join(cells)
                     + f" | {statistics.mean(r['image_auroc'] for r in runs):.3f}"
                     + f" | {statistics.mean(r['pixel_auroc'] for r in runs):.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n\nCommand: `python benchmarks/grad_stage_b_mapper.py --config "
                            f"{args.config} --seeds {' '.join(map(str, args.seeds))}`\n")
        args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
