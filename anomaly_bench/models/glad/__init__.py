"""GLAD: global and local adaptive diffusion models for unsupervised anomaly detection (ECCV 2024)."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "GLAD": "anomaly_bench.models.glad.lightning_model",
    "GLADModel": "anomaly_bench.models.glad.torch_model",
})
__all__ = ["GLAD", "GLADModel"]
