"""Bi-grid GRAD (config name ``grad``): normal + abnormal continuous grids, Feature Block Paste."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BiGridGRAD": "anomaly_bench.models.grad.lightning_model",
    "BiGridGRADModel": "anomaly_bench.models.grad.torch_model",
})
__all__ = ["BiGridGRAD", "BiGridGRADModel"]
