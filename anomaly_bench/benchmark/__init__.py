"""Benchmark grids: models x datasets x categories x seeds, run through the CLI, aggregated and
compared with the papers' numbers. Entry point: ``anomaly-bench benchmark --config <grid>.yaml``."""

from anomaly_bench.benchmark.aggregate import dataset_mean, per_category_pivot, ranks, seed_stats, to_percent
from anomaly_bench.benchmark.grid import Cell, GridConfig, GridError, expand_grid, load_grid, parse_grid
from anomaly_bench.benchmark.paper import compare_with_paper, load_paper_results
from anomaly_bench.benchmark.results import collect_results
from anomaly_bench.benchmark.runner import CellResult, GridRunner, default_command

__all__ = [
    "Cell",
    "CellResult",
    "GridConfig",
    "GridError",
    "GridRunner",
    "collect_results",
    "compare_with_paper",
    "dataset_mean",
    "default_command",
    "expand_grid",
    "load_grid",
    "load_paper_results",
    "parse_grid",
    "per_category_pivot",
    "ranks",
    "seed_stats",
    "to_percent",
]
