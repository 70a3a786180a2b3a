"""Export size and standalone-inferencer speed on CPU for every method's demo config.

    python benchmarks/deploy_speed.py                                   # all five methods, 1 thread
    python benchmarks/deploy_speed.py --methods crad patchcore --threads 2
    python benchmarks/deploy_speed.py --markdown benchmarks/results/deploy_cpu.md

Each ``configs/demo/<method>.yaml`` is built exactly as the CLI builds it (same parser, image size
linked from the data) with its random initial weights, no training: speed and size do not depend on
the weight values. Two parts need fitted state and get stand-ins of the fitted size: PatchCore's
memory bank (random rows, as many as the demo fit keeps: 10 % of 36 training images x 1,024
patches = 3,686) and PatchDiff's categories (the two of the synthetic LOCO layout: one graph each).
CRAD, GRAD, PatchCore and PatchDiff are exported to ONNX and OpenVINO from one capture; GLAD, whose
diffusion loop stops on data, to torch (a pickled module run by torch).

Speed is the inferencer's ``predict_batch`` on uint8 arrays already at the input size (lookup-table
normalisation + the runtime; no decoding or resizing), after one warm-up call, median of
``--repeats`` timed passes over ``--images`` images; "torch eager" is the torch model itself on the
same normalised batch with the same thread count, for reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_bench.atomic import atomic_write_text
from anomaly_bench.cli import AnomalyBenchCLI
from anomaly_bench.deploy.export import export_module
from anomaly_bench.deploy.inferencer import Inferencer
from anomaly_bench.terminal import quiet_terminal

REPO = Path(__file__).resolve().parent.parent
METHODS = ("crad", "grad", "patchcore", "patchdiff", "glad")
PATCHCORE_BANK_ROWS = 3686
PATCHDIFF_CATEGORIES = ("pins", "cables")


class _BuildOnly(AnomalyBenchCLI):
    """The CLI's parser and instantiation of model and datamodule, without a Trainer."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None


def build(method: str) -> tuple[Any, Any]:
    """(Lightning module, datamodule) of ``configs/demo/<method>.yaml``, with fitted-state stand-ins."""
    with quiet_terminal():
        cli = _BuildOnly(args=["--config", str(REPO / "configs" / "demo" / f"{method}.yaml")], run=False)
    module, datamodule = cli.model.eval(), cli.datamodule
    if method == "patchcore":
        generator = torch.Generator().manual_seed(0)
        module.model.set_memory_bank(torch.randn(PATCHCORE_BANK_ROWS, module.model.embed_dim, generator=generator))
    if method == "patchdiff":
        module.model.add_categories(list(PATCHDIFF_CATEGORIES))
    return module, datamodule


def _median_rate(run: Any, images: int, repeats: int) -> float:
    run()  # warm-up: lazy session creation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def measure(method: str, workdir: Path, threads: int, images: int, repeats: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    module, datamodule = build(method)
    size = tuple(datamodule.image_size)
    formats = ["torch"] if method == "glad" else ["onnx", "openvino"]
    folders = {fmt: workdir / method / fmt for fmt in formats}
    start = time.perf_counter()
    written = export_module(module, folders, size, datamodule.normalization)
    export_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(images)]
    category = PATCHDIFF_CATEGORIES[0] if method == "patchdiff" else None
    rows = []
    for fmt, metadata in written.items():
        inferencer = Inferencer(folders[fmt], num_threads=threads)
        single = _median_rate(lambda i=inferencer: [i.predict(image, category) for image in batch], images, repeats)
        batched = _median_rate(lambda i=inferencer: i.predict_batch(batch, category, batch_size=8), images, repeats)
        rows.append({"method": method, "format": fmt if fmt != "torch" else f"torch ({metadata['torch_program']})",
                     "input": f"{size[0]}x{size[1]}", "graphs": len(metadata["graphs"]),
                     "size_mb": metadata["total_bytes"] / 1e6, "export_s": export_seconds,
                     "batch1": single, "batch8": batched})
    normalised = np.stack([Inferencer(folders[formats[0]]).preprocess(image)[0] for image in batch])
    model = module.model.category(category) if category else module.model
    tensor = torch.from_numpy(normalised)

    def eager() -> None:
        with torch.no_grad():
            for start_index in range(0, images, 8):
                model(tensor[start_index:start_index + 8])

    eager_rate = _median_rate(eager, images, repeats)
    for row in rows:
        row["torch_eager_batch8"] = eager_rate
    return rows


def markdown(rows: list[dict[str, Any]], threads: int, command: str) -> str:
    lines = [
        "# Export size and standalone-inferencer speed on CPU",
        "",
        (f"Measured with `{command}` on {platform.processor() or platform.machine()} "
         f"({_cpu_name()}), {threads} thread(s), {_load()}. "
         "Demo configs with random weights (speed and size do not depend on the values); PatchCore with a "
         f"{PATCHCORE_BANK_ROWS}-row memory bank, PatchDiff with two categories (one graph each; speed of one). "
         "images/s: `Inferencer.predict` one image per call (batch 1) and `predict_batch(batch_size=8)` on uint8 "
         "arrays at the input size; torch eager: the torch model on the same normalised batches of 8."),
        "",
        ("| method | format | input | graphs | export size (MB) | export time (s, all formats) | images/s batch 1 "
         "| images/s batch 8 | torch eager images/s batch 8 |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['format']} | {r['input']} | {r['graphs']} | {r['size_mb']:.2f} | "
                     f"{r['export_s']:.0f} | {r['batch1']:.1f} | {r['batch8']:.1f} | {r['torch_eager_batch8']:.1f} |")
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        _, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    cores = os.cpu_count() or 1
    note = "; other jobs shared the machine: treat differences under ~1.5x as noise" if five > 0.5 * cores else ""
    return f"load average {five:.1f} on {cores} cores at the end{note}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to measure")
    parser.add_argument("--threads", type=int, default=1, help="runtime and torch threads")
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (the median is reported)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for method in args.methods:
            rows += measure(method, Path(workdir), args.threads, args.images, args.repeats)
            for row in rows[-2:] if method != "glad" else rows[-1:]:
                print(f"{row['method']:>10} {row['format']:<24} {row['size_mb']:8.2f} MB  export {row['export_s']:5.0f} s  "
                      f"{row['batch1']:8.1f} img/s (b1)  {row['batch8']:8.1f} img/s (b8)  "
                      f"torch {row['torch_eager_batch8']:8.1f} img/s", flush=True)
    command = "python benchmarks/deploy_speed.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
    table = markdown(rows, args.threads, command)
    print(table)
    if args.markdown is not None:
        atomic_write_text(args.markdown, table)


if __name__ == "__main__":
    main()
