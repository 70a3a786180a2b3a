"""Model-only speed and memory of every method: inference latency / throughput, training step time
(and the epoch time it implies), peak memory, on CPU and on the GPU when there is one.

    python benchmarks/speed.py                       # demo configs, CPU (+ GPU if present)
    python benchmarks/speed.py --devices cuda --config-set paper --batch-size 32

Measured the fair way: warm-up first, ``torch.cuda.synchronize()`` around timed regions, random
input tensors already on the device (no data loading, no image writing), ``torch.inference_mode``.
Each (method, device) runs in its own subprocess so that peak memory (CUDA max allocated, or the
process's peak RSS on CPU) belongs to that method alone and one crash cannot stop the others.
Results: ``benchmarks/results/speed_<device>.csv`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# name -> (class exported by anomaly_bench.models, demo config, paper-config glob)
METHODS = {
    "crad": ("CRAD", "configs/demo/crad.yaml", "configs/crad_mvtec*.yaml"),
    "grad": ("BiGridGRAD", "configs/demo/grad.yaml", "configs/grad_mvtec*.yaml"),
    "patchdiff": ("PatchDiffGRAD", "configs/demo/patchdiff.yaml", "configs/patchdiff_mvtec*.yaml"),
    "glad": ("GLAD", "configs/demo/glad.yaml", "configs/glad_mvtec*.yaml"),
}
MVTEC_MEAN_TRAIN_IMAGES = 242  # 3629 training images / 15 categories: one epoch of a separate model


# ----------------------------------------------------------------------------------- child side
def _instantiate(config: dict[str, Any], data_root: str | None):
    """Model and datamodule from a CLI config, through jsonargparse like the CLI does."""
    from jsonargparse import ArgumentParser

    from anomaly_bench.data import AnomalyDataModule
    from anomaly_bench.models import AnomalyModule

    data = config.get("data")
    if data_root and data:
        data = {**data, "init_args": {**data.get("init_args", {}), "root": data_root}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=AnomalyModule)
    parser.add_argument("--data", type=AnomalyDataModule)
    cfg = parser.parse_object({"model": config["model"], "data": data})
    init = parser.instantiate_classes(cfg)
    return init.model, init.data


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(config_path: Path, device: str, batch_size: int, warmup: int, iters: int, train_steps: int,
            data_root: str | None) -> dict[str, Any]:
    import torch
    from lightning.pytorch import Callback, Trainer

    config = yaml.safe_load(config_path.read_text())
    torch.manual_seed(0)
    model, datamodule = _instantiate(config, data_root)
    image_size = int((config.get("data", {}).get("init_args", {}) or {}).get("image_size") or model.default_image_size)
    out: dict[str, Any] = {"image_size": image_size, "batch_size": batch_size}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    # ---- training steps through a real Trainer (methods may need their fit-time setup); the timer
    # runs from on_train_batch_start to on_train_batch_end, so data loading is excluded.
    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            _sync(device)
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(device)
            self.times.append(time.perf_counter() - self._t)

    timer = StepTimer()
    trainer = Trainer(
        # max_steps (not max_epochs): a method may fix its own epoch count (bi-grid GRAD's stages)
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_steps=train_steps,
        limit_train_batches=train_steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        default_root_dir=tempfile.mkdtemp(prefix="speed_"),
    )
    fit_start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    out["fit_wall_s"] = time.perf_counter() - fit_start
    steady = timer.times[1:] or timer.times  # the first step pays for lazy initialisation
    train_batch = getattr(datamodule, "batch_size", None) or batch_size
    if steady:
        step = statistics.median(steady)
        out["train_step_ms"] = 1000.0 * step
        out["train_batch_size"] = train_batch
        out["train_epoch_s_mvtec_category"] = step * math.ceil(MVTEC_MEAN_TRAIN_IMAGES / train_batch)
    out["train_steps_timed"] = len(steady)

    # ---- inference: model only, random input already on the device
    # through score_batch, the test loop's path: per-category models (PatchDiff, GLAD's tables) need it
    from anomaly_bench.types import Batch

    model = model.to(device).eval()
    categories = list(getattr(datamodule, "categories", None) or ["default"])
    batch = Batch(
        image=torch.randn(batch_size, 3, image_size, image_size, device=device),
        label=torch.zeros(batch_size, dtype=torch.long, device=device),
        mask=torch.zeros(batch_size, image_size, image_size, device=device),
        orig_size=torch.full((batch_size, 2), image_size, dtype=torch.long, device=device),
        category=[categories[i % len(categories)] for i in range(batch_size)],
        defect=["good"] * batch_size,
        path=[f"speed_{i}.png" for i in range(batch_size)],
    )
    with torch.inference_mode():
        for _ in range(warmup):
            model.score_batch(batch)
        _sync(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model.score_batch(batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    per_batch = statistics.median(times)
    out["latency_ms_per_batch"] = 1000.0 * per_batch
    out["latency_ms_per_image"] = 1000.0 * per_batch / batch_size
    out["images_per_s"] = batch_size / per_batch
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["memory_kind"] = "cuda_max_allocated"
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        out["memory_kind"] = "process_peak_rss"
        out["rss_before_model_mb"] = rss_before
    return out


# ---------------------------------------------------------------------------------- parent side
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    try:  # the CPU model is more useful than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_config(method: str, config_set: str, device: str) -> Path | None:
    _, demo, paper_glob = METHODS[method]
    if config_set == "paper" or (config_set == "auto" and device.startswith("cuda")):
        found = sorted(REPO.glob(paper_glob))
        if found:
            return found[0]
        if config_set == "paper":
            return None
    path = REPO / demo
    return path if path.is_file() else None


def method_available(method: str, config: Path | None) -> str | None:
    """None when the method's class (from its config, else ``anomaly_bench.models``) imports."""
    import importlib

    class_path = f"anomaly_bench.models.{METHODS[method][0]}"
    if config is not None:
        class_path = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("class_path", class_path)
    module, _, name = class_path.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except Exception as err:  # the method may not be written yet
        return f"cannot import {class_path}: {type(err).__name__}: {err}"
    return None


def _config_root(config: Path) -> str | None:
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    root = (data.get("init_args") or {}).get("root")
    return str(root) if root else None


def ensure_demo_data(root: Path, config: Path) -> None:
    """Write small synthetic data in the layout the config's datamodule reads."""
    if root.is_dir() and any(root.iterdir()):
        return
    import yaml

    from anomaly_bench.data.synthetic import LAYOUT_OF_DATAMODULE, write_dataset

    data_class = str((yaml.safe_load(config.read_text()).get("data") or {}).get("class_path", "MVTecAD"))
    layout = LAYOUT_OF_DATAMODULE.get(data_class.rsplit(".", 1)[-1], "mvtec")
    print(f"  writing synthetic {layout}-layout data to {root}")
    write_dataset(layout, root, categories=None, size=64, seed=0, train=16, test_good=4, per_defect=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--devices", nargs="+", default=["auto"], help="cpu, cuda, or auto (cpu + cuda if present)")
    p.add_argument("--config-set", default="auto", choices=["auto", "demo", "paper"],
                   help="auto: demo configs on CPU, paper configs on GPU when they exist")
    p.add_argument("--config", nargs="+", default=[], metavar="METHOD=FILE",
                   help="use this CLI config for a method, e.g. crad=configs/crad_mvtec.yaml")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch (default 8 CPU, 32 GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--data-root", help="override data.init_args.root of the configs (synthetic data is fine)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per (method, device)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON spec of one measurement
    args = p.parse_args(argv)
    try:
        args.config = dict(item.split("=", 1) for item in args.config)
    except ValueError:
        p.error("--config entries must look like METHOD=FILE")
    unknown = set(args.config) - set(METHODS)
    if unknown:
        p.error(f"--config: unknown methods {sorted(unknown)}; expected {list(METHODS)}")

    if args.child:
        spec = json.loads(args.child)
        result = measure(Path(spec["config"]), spec["device"], spec["batch_size"], spec["warmup"], spec["iters"],
                         spec["train_steps"], spec.get("data_root"))
        Path(spec["result_path"]).write_text(json.dumps(result))
        return 0

    devices: list[str] = []
    for d in args.devices:
        if d == "auto":
            devices.append("cpu")
            try:
                import torch

                if torch.cuda.is_available():
                    devices.append("cuda")
            except ImportError:
                pass
        else:
            devices.append(d)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for device in dict.fromkeys(devices):
        rows = run_device(args, device)
        name = device_name(device)
        slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{device}_{name}").strip("_").lower()
        payload = {"device": device, "device_name": name, "torch_threads": _threads(), "rows": rows}
        (out_dir / f"speed_{slug}.json").write_text(json.dumps(payload, indent=2))
        _write_csv(rows, out_dir / f"speed_{slug}.csv", device, name)
        _print_table(rows, f"{device} ({name})")
        print(f"written: {out_dir / f'speed_{slug}.csv'}")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_device(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    batch = args.batch_size or (32 if device.startswith("cuda") else 8)
    for method in args.methods:
        row: dict[str, Any] = {"method": method, "device": device}
        config = Path(args.config[method]) if method in args.config else pick_config(method, args.config_set, device)
        reason = f"no {args.config_set} config for {method}" if config is None else method_available(method, config)
        if reason is not None:
            print(f"skip {method} on {device}: {reason}")
            rows.append({**row, "status": "skipped", "error": reason})
            continue
        config = config.resolve()
        row["config"] = str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)
        data_root = args.data_root or _config_root(config)
        if data_root and not Path(data_root).exists():
            ensure_demo_data(Path(data_root), config)
        with tempfile.TemporaryDirectory() as tmp:
            result_path = Path(tmp) / "result.json"
            spec = {"config": str(config), "device": device, "batch_size": batch, "warmup": args.warmup,
                    "iters": args.iters, "train_steps": args.train_steps, "data_root": data_root,
                    "result_path": str(result_path)}
            env = dict(os.environ)
            if device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
            print(f"measuring {method} on {device} with {row['config']} ...", flush=True)
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=REPO,
                                      capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({**row, "status": "failed", "error": f"timed out after {args.timeout:.0f}s"})
                continue
            if proc.returncode != 0 or not result_path.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"  failed: {' | '.join(tail)}")
                rows.append({**row, "status": "failed", "error": " | ".join(tail)})
                continue
            rows.append({**row, "status": "ok", **json.loads(result_path.read_text())})
    return rows


def _write_csv(rows: list[dict[str, Any]], path: Path, device: str, name: str) -> None:
    import pandas as pd

    pd.DataFrame(rows).assign(device_name=name).to_csv(path, index=False)


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Speed and memory: {title}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = [("method", "method", "{}"), ("ms/img", "latency_ms_per_image", "{:.2f}"), ("img/s", "images_per_s", "{:.1f}"),
            ("step ms", "train_step_ms", "{:.0f}"), ("epoch s*", "train_epoch_s_mvtec_category", "{:.1f}"),
            ("peak MB", "peak_memory_mb", "{:.0f}"), ("params M", "params_m", "{:.2f}"), ("status", "status", "{}")]
    for head, _, _ in cols:
        table.add_column(head, justify="left" if head in ("method", "status") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*[fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols])
    Console().print(table)
    print(f"* epoch s: median step time x steps of one epoch on {MVTEC_MEAN_TRAIN_IMAGES} images "
          "(mean MVTec AD category), data loading excluded")


if __name__ == "__main__":
    raise SystemExit(main())
