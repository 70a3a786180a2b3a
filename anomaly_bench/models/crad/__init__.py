"""CRAD: continuous memory representation for anomaly detection (see README.md)."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "CRAD": "anomaly_bench.models.crad.lightning_model",
    "CRADModel": "anomaly_bench.models.crad.torch_model",
    "CRADHead": "anomaly_bench.models.crad.torch_model",
})
__all__ = ["CRAD", "CRADHead", "CRADModel"]
