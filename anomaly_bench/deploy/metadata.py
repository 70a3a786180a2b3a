"""``metadata.json``: what an export folder holds and how to feed its graphs (no torch needed).

One export folder holds one format. Its ``metadata.json`` (written last, atomically, so a folder
with a metadata file is complete) records:

- ``format`` (``onnx`` | ``openvino`` | ``torch``), ``runtime`` and ``torch_program`` (for
  ``torch``: ``torch.export``, ``torchscript`` or ``pickled_module``, see ``export.py``);
- ``graphs``: ``[{category, file, files, call}]``, one entry per graph; ``category`` is null for a
  graph that scores every category, else the category the graph belongs to (a model that scores
  each category with its own network exports one graph per category);
- ``input``: tensor name, ``[batch, 3, height, width]`` float32, channels first, batch dynamic;
  ``outputs``: ``anomaly_map`` [batch, h, w] and ``pred_score`` [batch], raw;
- ``normalization``: its name and per-channel ``mean`` / ``std`` on the [0, 1] scale;
- ``preprocessing``: the datamodule's decode and resize rule;
- ``thresholds``: ``{category: Thresholds.to_dict()}`` (``all`` = every category) or null;
- ``method``, ``torch_model``, ``versions``, ``checkpoint`` (path and sha256), ``created``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "openvino", "torch")
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch"}
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "pred_score")
ALL_CATEGORIES = "all"  # the thresholds' key for "every category" (anomaly_bench.callbacks.thresholding)
NORMALIZATION_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
PREPROCESSING = {
    "decoder": "Pillow",
    "color": "RGB (grey replicated, 16-bit grey scaled to 8 bit, alpha dropped)",
    "jpeg_draft": "JPEG files are decoded by Pillow's draft mode at the smallest 1/2^k scale >= the input size",
    "resize": {"shrink": "area", "enlarge": "bilinear",
               "rule": "shrink when height x width of the input size < that of the image"},
    "layout": "NCHW float32, (level / 255 - mean) / std per channel",
    "map_to_image": "bilinear, half-pixel centres (torch interpolate, align_corners=False)",
}


class ExportMetadataError(ValueError):
    """``metadata.json`` is missing, unreadable or lacks what the inferencer needs; names the file and key."""


def normalization_record(name: str) -> dict[str, Any]:
    """``{"name", "mean", "std"}`` of a datamodule normalisation name.

    Args:
        name: ``imagenet`` | ``minus_one_one`` | ``none``.
    """
    if name not in NORMALIZATION_STATS:
        raise ExportMetadataError(f"normalization must be one of {sorted(NORMALIZATION_STATS)}, got {name!r}")
    mean, std = NORMALIZATION_STATS[name]
    return {"name": name, "mean": list(mean), "std": list(std)}


def read_metadata(export_dir: str | Path) -> dict[str, Any]:
    """Read and check ``<export_dir>/metadata.json``.

    Args:
        export_dir: a folder written by ``anomaly-bench export``.
    """
    path = Path(export_dir) / METADATA_FILE
    if not path.is_file():
        raise ExportMetadataError(f"{path} not found: is {export_dir} a folder written by `anomaly-bench export`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportMetadataError(f"{path} is not readable JSON ({err})") from None
    check_metadata(data, str(path))
    return data


def check_metadata(data: Any, where: str = METADATA_FILE) -> None:
    """Raise ``ExportMetadataError`` naming ``where`` and the key when ``data`` is not usable.

    Args:
        data: the parsed ``metadata.json``.
        where: the file name used in errors.
    """
    if not isinstance(data, Mapping):
        raise ExportMetadataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in ("format", "graphs", "input", "normalization"):
        if key not in data:
            raise ExportMetadataError(f"{where}: missing key {key!r}")
    if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ExportMetadataError(f"{where}: schema_version {data['schema_version']} is newer than this anomaly_bench "
                                  f"reads ({SCHEMA_VERSION}); upgrade anomaly_bench")
    if data["format"] not in FORMATS:
        raise ExportMetadataError(f"{where}: format must be one of {FORMATS}, got {data['format']!r}")
    graphs = data["graphs"]
    if not isinstance(graphs, Sequence) or not graphs or not all(isinstance(g, Mapping) and "file" in g for g in graphs):
        raise ExportMetadataError(f"{where}: 'graphs' must be a non-empty list of {{category, file}} objects")
    categories = [g.get("category") for g in graphs]
    if len(set(categories)) != len(categories) or (None in categories and len(categories) > 1):
        raise ExportMetadataError(f"{where}: 'graphs' must be one graph for every category (category null) or one per "
                                  f"category, got categories {categories}")
    size = data["input"].get("size") if isinstance(data["input"], Mapping) else None
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ExportMetadataError(f"{where}: input.size must be [height, width] in pixels, got {size!r}")
    norm = data["normalization"]
    if not (isinstance(norm, Mapping) and len(norm.get("mean", [])) == 3 and len(norm.get("std", [])) == 3):
        raise ExportMetadataError(f"{where}: normalization must hold 3 'mean' and 3 'std' values, got {norm!r}")
    thresholds = data.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, Mapping):
            raise ExportMetadataError(f"{where}: thresholds must be an object {{category: record}} or null")
        for category, record in thresholds.items():
            for key in ("image", "pixel"):
                value = record.get(key) if isinstance(record, Mapping) else "?"
                if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                    raise ExportMetadataError(f"{where}: thresholds[{category!r}].{key} must be a finite number or "
                                              f"null, got {value!r}")


def thresholds_for(thresholds: Mapping[str, Any] | None, category: str | None) -> Mapping[str, Any] | None:
    """The threshold record of ``category``: its own, else ``all``; with no category, ``all`` or the
    only record there is (a model of one category). None when there is none.

    Args:
        thresholds: the metadata's ``thresholds``.
        category: the image's category, or None when unknown.
    """
    if not thresholds:
        return None
    if category is not None and category in thresholds:
        return thresholds[category]
    if ALL_CATEGORIES in thresholds:
        return thresholds[ALL_CATEGORIES]
    if category is None and len(thresholds) == 1:
        return next(iter(thresholds.values()))
    return None


def normalised_score(value: Any, record: Mapping[str, Any], kind: str = "image") -> Any:
    """The display scale of ``anomaly_bench.metrics.thresholds.normalised_score``: 1.0 at the
    threshold, 0.0 at the median normal; None when the record has no such threshold.

    Args:
        value: raw score (or map).
        record: a thresholds record (``Thresholds.to_dict()``).
        kind: ``image`` or ``pixel``.
    """
    threshold = record.get(kind)
    if threshold is None:
        return None
    reference = record.get(f"{kind}_reference") or 0.0
    span = float(threshold) - float(reference)
    if span == 0.0 or not math.isfinite(span):
        return None
    return (value - reference) / span


def dumps(data: Mapping[str, Any]) -> str:
    """The file's text: sorted keys, two-space indent, no NaN (strict JSON)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
