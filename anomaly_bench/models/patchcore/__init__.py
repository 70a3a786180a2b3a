"""PatchCore: locally aware patch features, a coreset memory bank, nearest-neighbour scores (see README.md)."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "PatchCore": "anomaly_bench.models.patchcore.lightning_model",
    "PatchCoreModel": "anomaly_bench.models.patchcore.torch_model",
})
__all__ = ["PatchCore", "PatchCoreModel"]
