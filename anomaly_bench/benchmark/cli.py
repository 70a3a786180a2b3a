"""``anomaly-bench benchmark --config benchmarks/<grid>.yaml``: run a grid and report it.

    anomaly-bench benchmark --config G.yaml                          # this machine (local launcher)
    anomaly-bench benchmark --config G.yaml --launcher ray           # a local Ray instance
    anomaly-bench benchmark --config G.yaml --launcher ray --ray_address auto   # a running Ray cluster
    anomaly-bench benchmark --status G.yaml [--follow]               # progress, from another terminal
"""

from __future__ import annotations

import argparse
import fnmatch
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from anomaly_bench.benchmark.grid import LAUNCHERS, GridError, WandbSpec, expand_grid, load_grid
from anomaly_bench.benchmark.launchers import LauncherError
from anomaly_bench.benchmark.report import build_report, print_report, write_report
from anomaly_bench.benchmark.results import collect_results
from anomaly_bench.benchmark.runner import CommandBuilder, GridRunner, default_command
from anomaly_bench.benchmark.status import show_status
from anomaly_bench.benchmark.synth import prepare_synthetic

# Flags that used to be spelled with dashes: still accepted, with a note (LightningCLI uses underscores).
DASHED = ("--output-dir", "--max-parallel", "--dry-run", "--report-only", "--paper-results", "--wandb-mode")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anomaly-bench benchmark",
        description="Run a grid of models x datasets x categories x seeds (fit + test through the CLI) "
        "and report the results next to the papers' numbers.",
    )
    p.add_argument("--config", "-c", help="grid YAML file (see benchmarks/README.md)")
    p.add_argument("--output_dir", "--output-dir", help="override the grid's output_dir")
    p.add_argument("--only", action="append", default=[],
                   help="run only cells whose id matches this glob (repeatable), e.g. 'crad/*/seed0'")
    p.add_argument("--rerun", action="store_true", help="run finished cells again instead of skipping them")
    p.add_argument("--max_parallel", "--max-parallel", type=int,
                   help="local launcher: cells at once (default: one per GPU, 1 on CPU)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--report_only", "--report-only", action="store_true",
                   help="do not run anything; aggregate the cells already finished")
    p.add_argument("--paper_results", "--paper-results", help="paper table CSV (default: benchmarks/paper_results.csv)")
    p.add_argument("--wandb_mode", "--wandb-mode", choices=["auto", "online", "offline", "disabled"],
                   help="log every cell to W&B in this mode (group = grid name), overriding the grid's wandb.mode")
    p.add_argument("--launcher", choices=list(LAUNCHERS),
                   help="where cells run: local (this machine, the default) or ray (a Ray cluster); "
                   "overrides the grid's launcher")
    p.add_argument("--ray_address",
                   help="with --launcher ray: the cluster to join (auto | HOST:PORT | ray://HOST:10001); "
                   "default: the grid's ray.address, else a local Ray instance")
    p.add_argument("--status", metavar="GRID",
                   help="print the progress table of the grid GRID (from its status.json) and exit")
    p.add_argument("--follow", action="store_true",
                   help="with --status: keep the table live until the run ends")
    p.add_argument("--live", dest="live", action="store_true", default=None,
                   help="show the live table even when stdout is not a terminal")
    p.add_argument("--no_live", dest="live", action="store_false", help="plain progress lines, no live table")
    return p


def _warn_dashed(argv: Sequence[str]) -> None:
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in DASHED:
            new = "--" + flag[2:].replace("-", "_")
            print(f"anomaly-bench benchmark: note: {flag} is deprecated, use {new}", file=sys.stderr)


class _SignalForwarder:
    """SIGINT / SIGTERM stop the runner gracefully (the stages get the signal and a grace period;
    a second signal kills them). Only in the main thread, where Python allows handlers."""

    def __init__(self, runner: GridRunner) -> None:
        self.runner = runner
        self.previous: dict[int, object] = {}
        self.received: int | None = None

    def __enter__(self) -> _SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, sig: int, frame: object) -> None:
        first = self.received is None
        self.received = sig
        if first:
            print(f"\nanomaly-bench benchmark: {signal.Signals(sig).name}: stopping the running cells "
                  "(again to kill them at once)", file=sys.stderr, flush=True)
        self.runner.request_stop(sig)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def benchmark_main(argv: Sequence[str] | None = None, command_builder: CommandBuilder = default_command) -> int:
    """Entry point. Returns 0 when every selected cell finished (or was already finished),
    1 when some failed or were held by another runner (the report is still written), 2 on a bad grid
    file or a launcher that cannot start, 128 + N when stopped by signal N (re-run to resume)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _warn_dashed(argv)
    config = args.status or args.config
    if not config:
        print("error: --config GRID.yaml is required (or --status GRID.yaml)", file=sys.stderr)
        return 2
    try:
        grid = load_grid(config)
        if args.output_dir:
            grid = replace(grid, output_dir=Path(args.output_dir))
        if args.status:
            return show_status(grid, follow=args.follow)
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

    results = []
    if not args.report_only:
        try:
            runner = GridRunner(grid, cells, command_builder=command_builder, rerun=args.rerun,
                                max_parallel=args.max_parallel, launcher=args.launcher,
                                ray_address=args.ray_address, live=args.live)
            prepare_synthetic(grid.synth)
            print(f"benchmark {grid.name}: {len(cells)} cells, {runner.launcher_name} launcher -> "
                  f"{grid.output_dir}", flush=True)
            with _SignalForwarder(runner) as forwarder:
                results = runner.run()
        except (GridError, LauncherError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"ran on {runner.launcher.describe()}")
        if runner.interrupted:
            sig = forwarder.received or signal.SIGTERM
            done = sum(r.status in ("done", "skipped") for r in results)
            print(f"stopped by {signal.Signals(sig).name}: {done} of {len(results)} cells finished; "
                  "run the same command again to resume the others")
            return 128 + int(sig)

    long = collect_results(grid, cells)
    report = build_report(grid, long, results, paper_path=args.paper_results)
    path = write_report(report, grid.output_dir / "report", grid.name)
    print_report(report)
    print(f"tables: {path}")
    failed = [r for r in results if r.status == "failed"]
    busy = [r for r in results if r.status in ("busy", "interrupted")]
    if failed:
        print(f"{len(failed)} of {len(results)} cells failed; their error.log files are listed above")
    if busy:
        print(f"{len(busy)} cells did not run here (held by another runner, or stopped): "
              + ", ".join(r.cell_id for r in busy[:5]) + (" ..." if len(busy) > 5 else ""))
    html = _html_report(grid, config, args.paper_results)
    if html is not None:
        print(f"report: {html}")  # the last line: where to look
    return 1 if failed or busy else 0


def _html_report(grid, config: str, paper_results: str | None) -> Path | None:
    """``<output_dir>/report.html``, built from the run directories; a copy of the grid file beside it
    lets a report be rebuilt later from a copied results folder. Never fails the grid."""
    try:
        from anomaly_bench.atomic import atomic_write_text
        from anomaly_bench.report import build_report as build_html_report

        atomic_write_text(Path(grid.output_dir) / "grid.yaml", Path(config).read_text())
        return build_html_report(grid.output_dir, grid=grid, paper_path=paper_results)
    except Exception as err:  # the tables above are the record; the page is a view
        print(f"note: no report.html ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")
        return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(benchmark_main())
