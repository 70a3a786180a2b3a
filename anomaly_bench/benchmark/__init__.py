"""Benchmark grids: models x datasets x categories x seeds, run through the CLI, aggregated and
compared with the papers' numbers. Entry point: ``anomaly-bench benchmark --config <grid>.yaml``.

Imports are lazy: a Ray worker or ``--status`` loads only what it uses (not torch).
"""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "dataset_mean": "anomaly_bench.benchmark.aggregate",
    "per_category_pivot": "anomaly_bench.benchmark.aggregate",
    "ranks": "anomaly_bench.benchmark.aggregate",
    "seed_stats": "anomaly_bench.benchmark.aggregate",
    "to_percent": "anomaly_bench.benchmark.aggregate",
    "Cell": "anomaly_bench.benchmark.grid",
    "GridConfig": "anomaly_bench.benchmark.grid",
    "GridError": "anomaly_bench.benchmark.grid",
    "expand_grid": "anomaly_bench.benchmark.grid",
    "load_grid": "anomaly_bench.benchmark.grid",
    "parse_grid": "anomaly_bench.benchmark.grid",
    "compare_with_paper": "anomaly_bench.benchmark.paper",
    "load_paper_results": "anomaly_bench.benchmark.paper",
    "collect_results": "anomaly_bench.benchmark.results",
    "CellResult": "anomaly_bench.benchmark.runner",
    "GridRunner": "anomaly_bench.benchmark.runner",
    "default_command": "anomaly_bench.benchmark.runner",
})
__all__ = ["Cell", "CellResult", "GridConfig", "GridError", "GridRunner", "collect_results", "compare_with_paper",
           "dataset_mean", "default_command", "expand_grid", "load_grid", "load_paper_results", "parse_grid",
           "per_category_pivot", "ranks", "seed_stats", "to_percent"]
