"""Anomaly-detection methods: one folder each (``torch_model.py`` + ``lightning_model.py`` + README).

Imports are lazy: ``from anomaly_bench.models import CRAD`` loads CRAD only, and
``anomaly_bench.models.crad.torch_model`` imports without Lightning. ``MODELS`` is the explicit
registry the CLI uses (``--model CRAD`` or the config name ``--model crad``).
"""

from anomaly_bench._lazy import lazy_exports

# class name -> module, and the lower-case config names users type (README, configs/<name>_*.yaml)
MODELS: dict[str, str] = {
    "CRAD": "anomaly_bench.models.crad.lightning_model",
    "BiGridGRAD": "anomaly_bench.models.grad.lightning_model",
    "PatchDiffGRAD": "anomaly_bench.models.patchdiff.lightning_model",
    "GLAD": "anomaly_bench.models.glad.lightning_model",
    "PatchCore": "anomaly_bench.models.patchcore.lightning_model",
}
CONFIG_NAMES: dict[str, str] = {
    "crad": "CRAD", "grad": "BiGridGRAD", "patchdiff": "PatchDiffGRAD", "glad": "GLAD", "patchcore": "PatchCore",
}

__getattr__, __dir__ = lazy_exports(__name__, {**MODELS, "AnomalyModule": "anomaly_bench.models.base"})
__all__ = ["AnomalyModule", "CONFIG_NAMES", "MODELS", *MODELS]
