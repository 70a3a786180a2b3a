"""Export a trained model's inference to ONNX, OpenVINO or a torch program, with its metadata.

Every format holds the same graph: a normalised float32 image batch ``[B, 3, H, W]`` at the model's
input size -> ``(anomaly_map [B, h, w], pred_score [B])``, raw, float32, B dynamic. It is the torch
model's own ``forward`` (``<method>/torch_model.py``), captured once with ``torch.export``
(``graphs.py``):

- ``onnx``: ``torch.onnx.export`` of that program (the dynamo exporter, opset 18);
- ``openvino``: that ONNX graph converted by ``openvino.convert_model`` and saved with float32
  weights (``compress_to_fp16=False``); the inferencer compiles it with f32 inference precision;
- ``torch``: the program saved by ``torch.export.save`` (``.pt2``; ``torch.export.load``). Where
  ``torch.export`` cannot capture the forward: ``torch.jit.script`` (TorchScript, ``.ts``), and
  where that fails too, the torch model pickled whole (``.pt``, ``torch.load(weights_only=False)``;
  needs anomaly_bench and torch, not Lightning). ``metadata.json`` ``torch_program`` says which.

A model that scores each category with its own network (``categories`` + ``category(name)``, e.g. a
unified PatchDiff GRAD) is exported as one graph per category, each file named by its category.
A method whose inference cannot be a graph (GLAD: its ADS loop stops each image's denoising on
data) refuses ``onnx`` / ``openvino`` with one line and exports to ``torch`` only.

After writing, each ONNX / OpenVINO graph is run in its runtime on random inputs and compared with
the torch model; a relative difference above ``tolerance`` is an error (``check`` in the metadata).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_bench.atomic import atomic_write_text
from anomaly_bench.deploy import graphs as graph_tools
from anomaly_bench.deploy.decompositions import portable_program
from anomaly_bench.deploy.graphs import ExportError, ScoringGraph, graph_export_blocker
from anomaly_bench.deploy.metadata import (
    ALL_CATEGORIES,
    FORMATS,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAMES,
    PREPROCESSING,
    RUNTIMES,
    SCHEMA_VERSION,
    dumps,
    normalization_record,
)

DEFAULT_OPSET = 18
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a batch of one to a constant
DEFAULT_TOLERANCE = 1e-4
GRAPH_FORMATS = ("onnx", "openvino")
VERSION_PACKAGES = ("anomaly_bench", "torch", "onnx", "onnxscript", "onnxruntime", "openvino", "numpy", "pillow")

__all__ = [
    "DEFAULT_OPSET",
    "GRAPH_FORMATS",
    "ExportError",
    "export_formats",
    "export_model",
    "export_module",
    "graph_export_blocker",
    "relative_difference",
]


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages an export depends on (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            found[name] = None
    return found


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|``: the difference on the output's own scale.

    Args:
        actual: the runtime's output.
        expected: the torch model's output.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    scale = float(np.abs(expected).max())
    difference = float(np.abs(actual - expected).max())
    return difference / scale if scale > 0 else difference


# ------------------------------------------------------------------------------------- folders
def _staging_folder(output_dir: Path) -> Path:
    """A fresh staging folder beside ``output_dir`` (refusing to replace a folder that is not an export)."""
    if output_dir.exists() and (not output_dir.is_dir() or (any(output_dir.iterdir())
                                                             and not (output_dir / METADATA_FILE).is_file())):
        raise ExportError(f"{output_dir} exists and is not an export folder (no {METADATA_FILE}); choose another "
                          "output folder or empty it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))


def _publish(staging: Path, output_dir: Path) -> None:
    """Swap a finished staging folder in for ``output_dir`` (an earlier export is replaced whole)."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        os.replace(output_dir, old)
    os.replace(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------- export
def export_formats(
    model: nn.Module,
    outputs: Mapping[str, str | Path],
    input_size: int | Sequence[int],
    normalization: str,
    *,
    method: str | None = None,
    categories: Sequence[str] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export a torch model's inference in one or more formats from one capture; one folder each.

    The model is put in eval mode on the CPU. A folder holding an earlier export is replaced whole;
    any other non-empty folder is refused. Folders appear only once every format succeeded.

    Args:
        model: the torch model (``forward(images) -> AnomalyOutput``).
        outputs: ``{format: folder}``; formats ``onnx``, ``openvino``, ``torch``.
        input_size: (height, width) the model takes (the datamodule's ``image_size``), or one int.
        normalization: ``imagenet`` | ``minus_one_one`` | ``none`` (what the datamodule applied).
        method: the method's class path for the metadata (default: the torch model's).
        categories: the categories the model was trained on, for the metadata.
        thresholds: ``{category: Thresholds or its dict}`` to record, or None.
        checkpoint: the checkpoint the weights came from (its path and sha256 are recorded).
        opset: ONNX opset of ``onnx`` / ``openvino`` exports (>= 17).
        check: run every ONNX / OpenVINO graph in its runtime on random inputs and compare with torch.
        tolerance: largest relative difference ``check`` accepts.
        extra: more entries for the metadata (e.g. the datamodule's class).

    Returns:
        ``{format: metadata written}``.
    """
    unknown = [f for f in outputs if f not in FORMATS]
    if unknown or not outputs:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {', '.join(unknown) or 'none'}")
    if opset < 17:
        raise ExportError(f"opset must be >= 17 (Resize with antialias, LayerNormalization), got {opset}")
    blocker = graph_export_blocker(model)
    refused = [f for f in outputs if f in GRAPH_FORMATS]
    if blocker is not None and refused:
        raise ExportError(f"{type(model).__name__} cannot be exported to {'/'.join(refused)}: {blocker}")
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else \
        (int(input_size[0]), int(input_size[1]))
    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXAMPLE_BATCH, 3, *size, generator=generator)
    check_inputs = torch.randn(EXAMPLE_BATCH + 1, 3, *size, generator=generator)
    parts = graph_tools.category_models(model) if blocker is None else {None: model}
    # ONNX first: the OpenVINO conversion reads the ONNX file
    folders = {fmt: Path(outputs[fmt]) for fmt in FORMATS if fmt in outputs}
    written: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in folders}
    notes: dict[str, list[str]] = {fmt: [] for fmt in folders}
    torch_program: str | None = None
    staging: dict[str, Path] = {}
    try:
        for fmt, folder in folders.items():
            staging[fmt] = _staging_folder(folder)
        for category, part in parts.items():
            graph = ScoringGraph(part).eval()
            what = type(model).__name__ + (f" (category {category!r})" if category is not None else "")
            program, dynamic, reason = None, True, blocker.split("; use --format")[0] if blocker else None
            if blocker is None:
                try:
                    program, dynamic = graph_tools.capture(graph, example, what)
                except ExportError as err:
                    if any(fmt in GRAPH_FORMATS for fmt in folders):
                        raise
                    reason = str(err)  # the torch format falls back to TorchScript or the pickled module
            onnx_file, onnx_files, scratch = None, [], None
            for fmt in folders:
                if fmt == "torch":
                    name, torch_program, call, note = graph_tools.write_torch(program, graph, part, staging[fmt],
                                                                              category, reason)
                    files = [name]
                    notes[fmt] += [note] if note else []
                else:
                    if onnx_file is None:  # one ONNX graph serves both graph formats
                        if "onnx" in folders:
                            onnx_file = staging["onnx"] / graph_tools.graph_file_name(category, ".onnx")
                        else:
                            scratch = Path(tempfile.mkdtemp(dir=staging[fmt]))
                            onnx_file = scratch / "graph.onnx"
                        with graph_tools.quiet():
                            portable = portable_program(program)
                        onnx_files = graph_tools.write_onnx(portable, example, onnx_file, opset)
                    name, call = graph_tools.graph_file_name(category, ".onnx" if fmt == "onnx" else ".xml"), "images"
                    files = onnx_files if fmt == "onnx" else graph_tools.write_openvino(onnx_file, staging[fmt] / name)
                written[fmt].append({"category": category, "file": name, "files": files, "call": call,
                                     "dynamic_batch": dynamic})
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        result = {}
        for fmt, folder in folders.items():
            metadata = _metadata(model, fmt, written[fmt], size, normalization, method, categories, thresholds,
                                 checkpoint, opset, torch_program, notes[fmt], extra)
            if check and fmt in GRAPH_FORMATS:
                metadata["check"] = _check(metadata, staging[fmt], parts, check_inputs, tolerance)
            for entry in written[fmt]:
                entry["bytes"] = sum((staging[fmt] / f).stat().st_size for f in entry["files"])
            metadata["total_bytes"] = sum(entry["bytes"] for entry in written[fmt])
            atomic_write_text(staging[fmt] / METADATA_FILE, dumps(metadata))
            result[fmt] = metadata
        for fmt, folder in folders.items():
            _publish(staging[fmt], folder)
    except BaseException:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return result


def _check(metadata: Mapping[str, Any], folder: Path, parts: Mapping[str | None, nn.Module], inputs: torch.Tensor,
           tolerance: float) -> dict[str, Any]:
    """Run every graph in its runtime on ``inputs``; an ``ExportError`` when one disagrees with torch."""
    from anomaly_bench.deploy.runtimes import open_session

    errors: dict[str, dict[str, float]] = {}
    for entry in metadata["graphs"]:
        session = open_session(metadata, entry, folder)
        batch = inputs if entry["dynamic_batch"] else inputs[:1]
        with torch.no_grad():
            expected = [t.numpy() for t in ScoringGraph(parts[entry["category"]]).eval()(batch)]
        actual = session.run(batch.numpy(), entry["category"])
        found = {name: relative_difference(a, e) for name, a, e in zip(OUTPUT_NAMES, actual, expected)}
        bad = {k: v for k, v in found.items() if not v <= tolerance}
        if bad:
            listing = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
            raise ExportError(f"the {metadata['format']} graph {entry['file']} differs from the torch model by more "
                              f"than {tolerance:g} (relative to the output's largest value): {listing}")
        errors[str(entry["category"] or ALL_CATEGORIES)] = found
    return {"inputs": f"{len(inputs)} random normal images at the input size", "tolerance": tolerance,
            "relative_difference": errors}


def _metadata(model: nn.Module, fmt: str, graphs: list[dict[str, Any]], input_size: tuple[int, int],
              normalization: str, method: str | None, categories: Sequence[str] | None,
              thresholds: Mapping[str, Any] | None, checkpoint: str | Path | None, opset: int,
              torch_program: str | None, notes: list[str], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    torch_model = f"{type(model).__module__}.{type(model).__qualname__}"
    graph_categories = [g["category"] for g in graphs if g["category"] is not None]
    known = list(categories or []) or graph_categories or sorted(set(thresholds or {}) - {ALL_CATEGORIES})
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "runtime": RUNTIMES[fmt],
        "method": method or torch_model,
        "torch_model": torch_model,
        "graphs": graphs,
        "per_category_graphs": bool(graph_categories),
        "categories": [str(c) for c in known],
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, input_size[0], input_size[1]], "size": list(input_size),
                  "dtype": "float32", "layout": "NCHW",
                  "batch": "dynamic" if all(g["dynamic_batch"] for g in graphs) else 1},
        "outputs": {"anomaly_map": ["batch", "height", "width"], "pred_score": ["batch"],
                    "values": "raw (larger = more anomalous), never squashed"},
        "normalization": normalization_record(normalization),
        "preprocessing": dict(PREPROCESSING),
        "thresholds": _threshold_records(thresholds),
        "versions": package_versions(),
        "checkpoint": None if checkpoint is None else {"path": str(Path(checkpoint).resolve()),
                                                       "sha256": sha256_of(checkpoint)},
        "exporter": _exporter(fmt, opset, torch_program),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "torch":
        data["torch_program"] = torch_program
    if notes:
        data["notes"] = sorted(set(notes))
    data.update(dict(extra or {}))
    return data


def _exporter(fmt: str, opset: int, torch_program: str | None) -> dict[str, Any]:
    if fmt == "onnx":
        return {"tool": "torch.export + torch.onnx.export(dynamo=True)", "opset": opset}
    if fmt == "openvino":
        return {"tool": "torch.export + torch.onnx.export(dynamo=True) + openvino.convert_model", "opset": opset,
                "weights": "float32 (compress_to_fp16=False)", "inference_precision": "f32"}
    loads = {
        "torch.export": "torch.export.load(file).module()(images) -> (anomaly_map, pred_score)",
        "torchscript": "torch.jit.load(file)(images) -> (anomaly_map, pred_score)",
        "pickled_module": "torch.load(file, weights_only=False)(images[, categories]) -> AnomalyOutput "
                          "(needs anomaly_bench and torch, not Lightning)",
    }
    return {"tool": torch_program, "load": loads.get(str(torch_program), "")}


def _threshold_records(thresholds: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not thresholds:
        return None
    return {str(c): r.to_dict() if hasattr(r, "to_dict") else dict(r) for c, r in thresholds.items()}


def export_model(model: nn.Module, output_dir: str | Path, fmt: str, input_size: int | Sequence[int],
                 normalization: str, **options: Any) -> dict[str, Any]:
    """Export a torch model's inference in one format (``export_formats`` with one folder).

    Args:
        model: the torch model (``forward(images) -> AnomalyOutput``).
        output_dir: the export folder to write.
        fmt: ``onnx`` | ``openvino`` | ``torch``.
        input_size: (height, width) the model takes, or one int.
        normalization: ``imagenet`` | ``minus_one_one`` | ``none``.
        **options: the keyword options of ``export_formats`` (``thresholds``, ``checkpoint``...).
    """
    return export_formats(model, {fmt: output_dir}, input_size, normalization, **options)[fmt]


def export_module(module: nn.Module, outputs: Mapping[str, str | Path], input_size: int | Sequence[int],
                  normalization: str | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    """Export a Lightning ``AnomalyModule``: its torch model, with its thresholds and method name.

    Args:
        module: the trained module (``module.model`` is exported; a module without one, whole).
        outputs: ``{format: folder}``.
        input_size: (height, width) the datamodule resizes images to.
        normalization: the datamodule's normalisation; None = the module's ``input_normalization``.
        **options: further ``export_formats`` options (``checkpoint``, ``categories``, ``opset``...).
    """
    blocker = graph_export_blocker(module)
    refused = [f for f in outputs if f in GRAPH_FORMATS]
    if blocker is not None and refused:
        raise ExportError(f"{type(module).__name__} cannot be exported to {'/'.join(refused)}: {blocker}")
    model = getattr(module, "model", None)
    if not isinstance(model, nn.Module):
        model = module
    options.setdefault("method", f"{type(module).__module__}.{type(module).__qualname__}")
    options.setdefault("thresholds", getattr(module, "thresholds", None))
    return export_formats(model, outputs, input_size,
                          normalization or str(getattr(module, "input_normalization", "imagenet")), **options)
