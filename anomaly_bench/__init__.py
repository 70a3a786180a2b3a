"""anomaly_bench: train, test and benchmark image anomaly-detection methods with PyTorch Lightning.

    from anomaly_bench import CRAD, MVTecAD
    from lightning.pytorch import Trainer

    Trainer(max_epochs=40).fit(CRAD(), MVTecAD(root="data/mvtec", category="bottle"))

Every model and datamodule is importable from here; imports are lazy, so ``import anomaly_bench``
is cheap and a torch model (``anomaly_bench.models.crad.torch_model``) imports without Lightning.
"""

from anomaly_bench._lazy import lazy_exports

__version__ = "0.2.0"

from anomaly_bench.data import DATAMODULES as _DATAMODULES  # noqa: E402  (light: lazy packages)
from anomaly_bench.models import MODELS as _MODELS  # noqa: E402

_OTHERS = {
    "AnomalyModule": "anomaly_bench.models.base",
    "AnomalyDataModule": "anomaly_bench.data.datamodule",
    "DataError": "anomaly_bench.data.io",
    "AnomalyOutput": "anomaly_bench.types",
    "Batch": "anomaly_bench.types",
    "Sample": "anomaly_bench.types",
    "Prediction": "anomaly_bench.types",
    "Evaluator": "anomaly_bench.metrics.evaluator",
    "Visualizer": "anomaly_bench.callbacks.visualizer",
}
__getattr__, __dir__ = lazy_exports(__name__, {**_MODELS, **_DATAMODULES, **_OTHERS})
__all__ = ["__version__", *_MODELS, *_DATAMODULES, *_OTHERS]
