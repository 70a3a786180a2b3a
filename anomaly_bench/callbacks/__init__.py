"""Callbacks: run directories, heat maps, score files, checkpoints, per-epoch seeding, and the
default set every run gets (``defaults.default_callbacks``)."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BestAndLastCheckpoint": "anomaly_bench.callbacks.checkpoint",
    "EpochSeed": "anomaly_bench.callbacks.seeding",
    "RunDirectory": "anomaly_bench.callbacks.rundir",
    "ScoreWriter": "anomaly_bench.callbacks.scores",
    "Visualizer": "anomaly_bench.callbacks.visualizer",
    "default_callbacks": "anomaly_bench.callbacks.defaults",
})
__all__ = ["BestAndLastCheckpoint", "EpochSeed", "RunDirectory", "ScoreWriter", "Visualizer", "default_callbacks"]
