"""Stand-in for ``python -m anomaly_bench.cli`` in benchmark tests: no training, instant.

argv: stage cell_config run_dir ckpt. ``fit`` writes a checkpoint; ``test`` writes metrics.csv and
metrics.json whose values depend on the model's ``init_args.quality`` and the seed, so the
aggregation can be checked against known answers. A model with ``init_args.fail_at`` equal to
the stage exits with an error. Every call is appended to ``<run_dir>/calls.txt`` and its pid to
``<run_dir>/pids.txt``.

Resumable fits, like the real CLI's: ``init_args.epochs`` (default 1) epochs of ``epoch_s`` seconds
(default 0) each; after every epoch ``checkpoints/last.ckpt`` (a zip archive, like torch.save's)
records it, and a fit given a checkpoint starts at the epoch after the recorded one. Each epoch
start is appended to ``<run_dir>/epochs.log`` as ``<epoch> <pid> <time>``.
"""

import json
import os
import sys
import time
import zipfile
from pathlib import Path

import yaml

stage, config_path, run_dir, ckpt = sys.argv[1:5]
run = Path(run_dir)
config = yaml.safe_load(Path(config_path).read_text())
args = config["model"]["init_args"]
with open(run / "calls.txt", "a") as fh:
    fh.write(f"{stage} ckpt={ckpt} cuda={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}\n")
with open(run / "pids.txt", "a") as fh:
    fh.write(f"{os.getpid()}\n")
if args.get("fail_at") == stage:
    print(f"simulated crash in {stage}", file=sys.stderr)
    sys.exit(3)
if stage == "fit":
    start = 0
    if ckpt != "None":
        with zipfile.ZipFile(ckpt) as archive:
            start = int(archive.read("epoch")) + 1
        print(f"resuming from {ckpt} at epoch {start}", flush=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    for epoch in range(start, int(args.get("epochs", 1))):
        with open(run / "epochs.log", "a") as fh:
            fh.write(f"{epoch} {os.getpid()} {time.time():.3f}\n")
        print(f"epoch {epoch}", flush=True)
        time.sleep(float(args.get("epoch_s", 0)))
        tmp = run / "checkpoints" / ".last.ckpt.tmp"
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr("epoch", str(epoch))
        os.replace(tmp, run / "checkpoints" / "last.ckpt")
    sys.exit(0)
category = config["data"]["init_args"]["category"]
categories = ["a", "b"] if category == "all" else [category] if isinstance(category, str) else category
seed = int(config["seed_everything"])
quality = float(args.get("quality", 0.5))
rows = []
for i, cat in enumerate(categories):
    rows.append({"category": cat, "image_auroc": quality + 0.01 * seed + 0.02 * i, "pixel_auroc": quality})
mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("image_auroc", "pixel_auroc")}
lines = ["category,image_auroc,pixel_auroc"] + [f"{r['category']},{r['image_auroc']},{r['pixel_auroc']}" for r in rows]
lines.append(f"mean,{mean['image_auroc']},{mean['pixel_auroc']}")
(run / "metrics.csv").write_text("\n".join(lines) + "\n")
(run / "metrics.json").write_text(json.dumps({"per_category": {r["category"]: r for r in rows}, "mean": mean}))
