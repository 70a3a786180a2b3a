"""One session per exported graph, in the runtime its format needs, imported only when used.

``onnx`` runs in ONNX Runtime, ``openvino`` in OpenVINO (float32 inference precision: on CPUs with
bf16 units OpenVINO would otherwise compute in bf16, 1e-2 away from the torch model), ``torch``
in torch itself (the only format that needs it). Each session maps a float32 batch
``[B, 3, H, W]`` to ``(anomaly_map [B, h, w], pred_score [B])`` as float32 NumPy arrays.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.deploy.metadata import ExportMetadataError


class RuntimeMissingError(ImportError):
    """The runtime an export needs is not installed; the message says which package to install."""


def _import(module: str, package: str, fmt: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeMissingError(f"this export is in the {fmt!r} format, which runs in {package}: "
                                  f"pip install {package} (or anomaly_bench[deploy])") from None


class OnnxRuntimeSession:
    """An ONNX graph in ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file.
        device: ``CPU`` (ONNX Runtime's CPU execution provider) or an execution provider name.
        num_threads: intra-op threads; None lets ONNX Runtime choose (all cores).
    """

    def __init__(self, path: Path, device: str = "CPU", num_threads: int | None = None) -> None:
        ort = _import("onnxruntime", "onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # constant-folding notices are not the user's business
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        provider = "CPUExecutionProvider" if device.upper() == "CPU" else device
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, score = self.session.run(None, {self.input_name: images})[:2]
        return np.asarray(anomaly_map, np.float32), np.asarray(score, np.float32)


class OpenVINOSession:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for ``device`` in float32 precision.

    Args:
        path: the ``.xml`` file.
        device: an OpenVINO device name (``CPU``, ``GPU``, ``AUTO``...).
        num_threads: inference threads on the CPU; None lets OpenVINO choose.
    """

    def __init__(self, path: Path, device: str = "CPU", num_threads: int | None = None) -> None:
        ov = _import("openvino", "openvino", "openvino")
        config: dict[str, Any] = {}
        if device.upper().startswith(("CPU", "GPU")):
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if num_threads and device.upper().startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.compiled = ov.Core().compile_model(str(path), device, config)

    def run(self, images: np.ndarray, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled([images])
        return np.asarray(result[0], np.float32), np.asarray(result[1], np.float32)


class TorchSession:
    """A ``torch`` export: an ``ExportedProgram`` (``.pt2``), a TorchScript file or a pickled module.

    Args:
        path: the file.
        program: ``torch.export`` | ``torchscript`` | ``pickled_module`` (metadata ``torch_program``).
        call: ``images`` or ``images_and_categories`` (the module also takes each image's category).
        device: ``CPU`` or a torch device string (``cuda:0``...).
        num_threads: torch intra-op threads; None keeps torch's setting.
    """

    def __init__(self, path: Path, program: str, call: str = "images", device: str = "CPU",
                 num_threads: int | None = None) -> None:
        torch = _import("torch", "torch", "torch")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.torch = torch
        self.device = torch.device("cpu" if device.upper() == "CPU" else device)
        if program == "torch.export":
            self.module = torch.export.load(str(path)).module()
        elif program == "torchscript":
            self.module = torch.jit.load(str(path), map_location=self.device)
        elif program == "pickled_module":
            # written by anomaly-bench export itself: a full nn.Module, so it is unpickled (trusted file)
            self.module = torch.load(str(path), map_location=self.device, weights_only=False)
            self.module.eval()
        else:
            raise ExportMetadataError(f"unknown torch_program {program!r}; expected torch.export, torchscript or "
                                      "pickled_module")
        if program != "torch.export":
            self.module.to(self.device)
        self.call = call

    def run(self, images: np.ndarray, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        batch = torch.from_numpy(images).to(self.device)
        with torch.no_grad():
            if self.call == "images_and_categories":
                output = self.module(batch, [category] * batch.shape[0])
            else:
                output = self.module(batch)
        if isinstance(output, Mapping):
            anomaly_map, score = output["anomaly_map"], output["pred_score"]
        elif hasattr(output, "anomaly_map"):
            anomaly_map, score = output.anomaly_map, output.pred_score
        else:
            anomaly_map, score = output[0], output[1]
        return anomaly_map.float().cpu().numpy(), score.float().cpu().numpy()


def open_session(metadata: Mapping[str, Any], graph: Mapping[str, Any], export_dir: Path, device: str = "CPU",
                 num_threads: int | None = None) -> OnnxRuntimeSession | OpenVINOSession | TorchSession:
    """The session of one ``graphs`` entry of an export folder.

    Args:
        metadata: the folder's ``metadata.json``.
        graph: one of its ``graphs`` entries.
        export_dir: the folder.
        device: where to run (``CPU`` by default).
        num_threads: threads the runtime may use; None = its default.
    """
    path = Path(export_dir) / str(graph["file"])
    if not path.is_file():
        raise ExportMetadataError(f"{path} listed in {Path(export_dir) / 'metadata.json'} does not exist")
    fmt = metadata["format"]
    if fmt == "onnx":
        return OnnxRuntimeSession(path, device, num_threads)
    if fmt == "openvino":
        return OpenVINOSession(path, device, num_threads)
    return TorchSession(path, str(metadata.get("torch_program", "torch.export")), str(graph.get("call", "images")),
                        device, num_threads)


__all__ = ["OnnxRuntimeSession", "OpenVINOSession", "RuntimeMissingError", "TorchSession",
           "open_session"]
