"""Bi-grid GRAD (config name ``grad``): normal + abnormal continuous grids, Feature Block Paste."""

from anomaly_bench.models.grad.lightning_model import BiGridGRAD
from anomaly_bench.models.grad.torch_model import BiGridGRADModel

__all__ = ["BiGridGRAD", "BiGridGRADModel"]
