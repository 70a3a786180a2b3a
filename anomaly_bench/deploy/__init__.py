"""Deployable models: ``anomaly-bench export`` writes a graph (ONNX, OpenVINO or a torch program) plus
``metadata.json``; :class:`Inferencer` scores images with it, needing only NumPy, Pillow and the
runtime (ONNX Runtime or OpenVINO), never torch or Lightning.

Imports are lazy: ``from anomaly_bench.deploy import Inferencer`` does not import torch (only the
exporter, ``anomaly_bench.deploy.export``, does).
"""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "Inferencer": "anomaly_bench.deploy.inferencer",
    "InferenceResult": "anomaly_bench.deploy.inferencer",
    "ExportMetadataError": "anomaly_bench.deploy.metadata",
    "read_metadata": "anomaly_bench.deploy.metadata",
    "PreprocessError": "anomaly_bench.deploy.preprocess",
    "RuntimeMissingError": "anomaly_bench.deploy.runtimes",
    "ExportError": "anomaly_bench.deploy.export",
    "export_model": "anomaly_bench.deploy.export",
    "export_module": "anomaly_bench.deploy.export",
})
__all__ = ["ExportError", "ExportMetadataError", "InferenceResult", "Inferencer", "PreprocessError",
           "RuntimeMissingError", "export_model", "export_module", "read_metadata"]
