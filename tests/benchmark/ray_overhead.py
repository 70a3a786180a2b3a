"""What the ray launcher costs per cell: the same grid of instant fake cells (each stage a short
Python process, as with the real CLI minus the training) run by local threads and by Ray tasks on a
local Ray instance with as many CPUs as local slots.

    python -m tests.benchmark.ray_overhead --cells 12 --slots 2

Prints wall times and the overhead per cell: (ray - local) * slots / cells, i.e. how much longer
each cell holds its slot under Ray. ``ray.init`` (once per run of the benchmark command) and the
first, cold Ray run (worker processes starting and importing anomaly_bench) are shown apart.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from anomaly_bench.benchmark.grid import expand_grid, parse_grid
from anomaly_bench.benchmark.runner import GridRunner
from tests.benchmark.fake_commands import fake_command


def grid(root: Path, cells: int) -> dict:
    return {"name": "overhead", "output_dir": str(root / "out"), "devices": "cpu",
            "models": [{"name": f"m{i}", "class_path": "fake.M", "init_args": {"epochs": 1}} for i in range(cells)],
            "datasets": [{"name": "d", "class_path": "anomaly_bench.data.MVTecAD", "init_args": {"root": "x"}}]}


def timed_run(raw: dict, launcher: str, slots: int) -> float:
    config = parse_grid(raw)
    start = time.perf_counter()
    results = GridRunner(config, expand_grid(config), command_builder=fake_command, rerun=True, max_parallel=slots,
                         launcher=launcher, log=lambda m: None, live=False).run()
    seconds = time.perf_counter() - start
    assert {r.status for r in results} == {"done"}, [r.error for r in results if r.status != "done"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12, help="cells in the grid")
    parser.add_argument("--slots", type=int, default=2, help="cells at once (local threads = Ray CPUs)")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        raw = grid(Path(tmp), args.cells)
        local = min(timed_run(raw, "local", args.slots) for _ in range(2))
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.slots, include_dashboard=False, object_store_memory=256 * 2**20,
                 logging_level="WARNING")
        init_s = time.perf_counter() - start
        cold = timed_run(raw, "ray", args.slots)
        warm = min(timed_run(raw, "ray", args.slots) for _ in range(2))
        ray.shutdown()
    per_cell = (warm - local) * args.slots / args.cells
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.cells} cells, {args.slots} slots")
    print(f"local launcher         {local:6.2f} s  ({local * args.slots / args.cells:.2f} s per cell and slot)")
    print(f"ray.init (local)       {init_s:6.2f} s  (once per benchmark command)")
    print(f"ray launcher, cold     {cold:6.2f} s  (workers start, import anomaly_bench)")
    print(f"ray launcher, warm     {warm:6.2f} s  ({warm * args.slots / args.cells:.2f} s per cell and slot)")
    print(f"overhead per cell      {per_cell:6.2f} s  (warm ray - local)")


if __name__ == "__main__":
    main()
