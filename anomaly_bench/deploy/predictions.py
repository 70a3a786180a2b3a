"""Score image files with an ``Inferencer`` and write ``predictions.csv`` plus predicted masks.

What ``anomaly-bench predict --export DIR PATHS...`` writes into its output folder (without torch
for ONNX / OpenVINO exports)::

    predictions.csv          path, category, pred_score, pred_label, image_threshold, pixel_threshold,
                             normalized_score, map_max, map_mean, mask_file
    masks/<category>/<name>.png   255 = anomalous, at the image's own size (with a pixel threshold)

``pred_label`` / ``image_threshold`` / ``normalized_score`` are empty without an image threshold,
``mask_file`` without a pixel threshold. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_bench.atomic import atomic_write_bytes, atomic_write_text
from anomaly_bench.deploy.inferencer import Inferencer, InferenceResult

PREDICTIONS_FILE = "predictions.csv"
MASK_FOLDER = "masks"
COLUMNS = ["path", "category", "pred_score", "pred_label", "image_threshold", "pixel_threshold", "normalized_score",
           "map_max", "map_mean", "mask_file"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask [H, W] as PNG bytes (255 = anomalous).

    Args:
        mask: bool [H, W].
    """
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_name(path: Path, roots: Sequence[Path]) -> str:
    """A file name unique among the inputs: the path below its input folder, flattened."""
    for root in roots:
        try:
            relative = path.relative_to(root)
        except ValueError:
            continue
        if relative.parts:
            return _safe("__".join(relative.with_suffix("").parts)) + ".png"
    return _safe(path.stem) + ".png"


def write_predictions(inferencer: Inferencer, images: Sequence[Path], output_dir: str | Path,
                      category: str | None = None, batch_size: int = 8,
                      roots: Sequence[Path] = ()) -> tuple[Path, list[InferenceResult]]:
    """Score ``images`` and write ``predictions.csv`` and the masks into ``output_dir``.

    Args:
        inferencer: the loaded export.
        images: image files to score.
        output_dir: where the CSV and masks go (created).
        category: the images' category (selects graph and thresholds); None when unknown.
        batch_size: images per graph call.
        roots: the folders the images were found in (keeps mask names unique and readable).

    Returns:
        (the CSV path, the results in the order of ``images``).
    """
    output_dir = Path(output_dir)
    results = inferencer.predict_batch(list(images), category, batch_size=batch_size)
    rows = []
    for path, result in zip(images, results):
        mask_file = ""
        if result.mask is not None:
            relative = Path(MASK_FOLDER) / _safe(category or "all") / _mask_name(Path(path), roots)
            atomic_write_bytes(output_dir / relative, mask_png(result.mask), fsync=False)
            mask_file = str(relative)
        rows.append({
            "path": str(path), "category": category or "", "pred_score": result.score,
            "pred_label": "" if result.label is None else result.label,
            "image_threshold": "" if result.image_threshold is None else result.image_threshold,
            "pixel_threshold": "" if result.pixel_threshold is None else result.pixel_threshold,
            "normalized_score": "" if result.normalized_score is None else result.normalized_score,
            # of the model's own map, as the Lightning predict's predictions.csv
            "map_max": float(result.anomaly_map_at_input.max()), "map_mean": float(result.anomaly_map_at_input.mean()),
            "mask_file": mask_file,
        })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = output_dir / PREDICTIONS_FILE
    atomic_write_text(csv_path, buffer.getvalue())
    return csv_path, results
