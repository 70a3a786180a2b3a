"""``anomaly-bench benchmark --config benchmarks/<grid>.yaml``: run a grid and report it."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from anomaly_bench.benchmark.grid import GridError, WandbSpec, expand_grid, load_grid
from anomaly_bench.benchmark.report import build_report, print_report, write_report
from anomaly_bench.benchmark.results import collect_results
from anomaly_bench.benchmark.runner import CommandBuilder, GridRunner, default_command
from anomaly_bench.benchmark.synth import prepare_synthetic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anomaly-bench benchmark",
        description="Run a grid of models x datasets x categories x seeds (fit + test through the CLI) "
        "and report the results next to the papers' numbers.",
    )
    p.add_argument("--config", "-c", required=True, help="grid YAML file (see benchmarks/README.md)")
    p.add_argument("--output_dir", "--output-dir", help="override the grid's output_dir")
    p.add_argument("--only", action="append", default=[],
                   help="run only cells whose id matches this glob (repeatable), e.g. 'crad/*/seed0'")
    p.add_argument("--rerun", action="store_true", help="run finished cells again instead of skipping them")
    p.add_argument("--max_parallel", "--max-parallel", type=int, help="cells at once (default: one per GPU, 1 on CPU)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--report_only", "--report-only", action="store_true",
                   help="do not run anything; aggregate the cells already finished")
    p.add_argument("--paper_results", "--paper-results", help="paper table CSV (default: benchmarks/paper_results.csv)")
    p.add_argument("--wandb_mode", "--wandb-mode", choices=["auto", "online", "offline", "disabled"],
                   help="log every cell to W&B in this mode (group = grid name), overriding the grid's wandb.mode")
    return p


def benchmark_main(argv: Sequence[str] | None = None, command_builder: CommandBuilder = default_command) -> int:
    """Entry point. Returns 0 when every selected cell finished (or was already finished),
    1 when some failed (the report is still written), 2 on a bad grid file."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        grid = load_grid(args.config)
        if args.output_dir:
            grid = replace(grid, output_dir=Path(args.output_dir))
        if args.wandb_mode:
            spec = grid.wandb or WandbSpec(group=grid.name)
            grid = replace(grid, wandb=replace(spec, mode=args.wandb_mode))
        cells = expand_grid(grid)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        cells = [c for c in cells if any(fnmatch.fnmatch(c.id, pat) for pat in args.only)]
        if not cells:
            print(f"error: no cell id matches {args.only}", file=sys.stderr)
            return 2
    if args.dry_run:
        for c in cells:
            print(c.id)
        print(f"{len(cells)} cells; output in {grid.output_dir / 'cells'}")
        return 0

    runner = GridRunner(grid, cells, command_builder=command_builder, rerun=args.rerun,
                        max_parallel=args.max_parallel)
    results = []
    if not args.report_only:
        try:
            prepare_synthetic(grid.synth)
        except GridError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        where = "CPU" if runner.slots == [None] * len(runner.slots) else f"GPUs {runner.slots}"
        print(f"benchmark {grid.name}: {len(cells)} cells on {where} -> {grid.output_dir}")
        results = runner.run()

    long = collect_results(grid, cells)
    report = build_report(grid, long, results, paper_path=args.paper_results)
    path = write_report(report, grid.output_dir / "report", grid.name)
    print_report(report)
    print(f"report: {path}")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} cells failed; their error.log files are listed above")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(benchmark_main())
