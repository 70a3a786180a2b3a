"""The standalone inferencer: an export folder + an image -> score, verdict, map and mask.

Needs NumPy, Pillow and the export's runtime (ONNX Runtime or OpenVINO; torch only for ``torch``
exports); never torch or Lightning for ONNX / OpenVINO exports::

    from anomaly_bench.deploy import Inferencer

    inferencer = Inferencer("results/CRAD/MVTecAD/bottle/version_0/export/onnx")
    result = inferencer.predict("bottle_042.png")        # or a uint8 RGB array [H, W, 3]
    result.score, result.label, result.anomaly_map, result.mask

Images are decoded, resized and normalised as the datamodule did in training (``preprocess.py``,
recorded in ``metadata.json``). ``label`` and ``mask`` come from the thresholds fitted on normal
validation images (``metadata.json`` ``thresholds``); an export without them gives raw scores and
maps only (``label`` / ``mask`` None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.deploy import preprocess
from anomaly_bench.deploy.metadata import ExportMetadataError, normalised_score, read_metadata, thresholds_for
from anomaly_bench.deploy.runtimes import open_session

ImageInput = str | Path | np.ndarray


@dataclass
class InferenceResult:
    """One image's result.

    Attributes:
        score: the raw image score (larger = more anomalous), as the torch model computes it.
        label: 1 anomalous / 0 normal at the image threshold; None when the export has none.
        anomaly_map: float32 [H, W], the raw map resized (bilinear) to the image's own size.
        anomaly_map_at_input: float32 [h, w], the raw map as the graph returned it (the model's size).
        mask: bool [H, W], ``anomaly_map >= pixel threshold``; None without a pixel threshold.
        normalized_score: the score on the display scale (1.0 = the threshold, 0.0 = the median
            normal image); None without an image threshold.
        category: the category the image was scored as (None: not given).
        image_threshold: the image threshold used, or None.
        pixel_threshold: the pixel threshold used, or None.
        path: the image file, when a path was given.
    """

    score: float
    label: int | None
    anomaly_map: np.ndarray
    anomaly_map_at_input: np.ndarray
    mask: np.ndarray | None
    normalized_score: float | None
    category: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    path: str | None = None


class Inferencer:
    """Score images with an ``anomaly-bench export`` folder, without torch or Lightning.

    Args:
        export_dir: the folder holding ``metadata.json`` and the graph files.
        device: where the runtime runs: ``CPU`` (default), an OpenVINO device (``GPU``, ``AUTO``),
            an ONNX Runtime execution provider name, or a torch device for ``torch`` exports.
        num_threads: threads the runtime may use; None = the runtime's default (all cores).
        resize_backend: ``auto`` (OpenCV if installed: bit-identical to training; else NumPy, within
            one uint8 level), ``opencv`` or ``numpy``.
    """

    def __init__(self, export_dir: str | Path, device: str = "CPU", num_threads: int | None = None,
                 resize_backend: str = "auto") -> None:
        self.export_dir = Path(export_dir)
        self.metadata = read_metadata(self.export_dir)
        self.device, self.num_threads = device, num_threads
        if resize_backend not in preprocess.RESIZE_BACKENDS:
            raise ExportMetadataError(f"resize_backend must be one of {preprocess.RESIZE_BACKENDS}, "
                                      f"got {resize_backend!r}")
        self.resize_backend = resize_backend
        height, width = self.metadata["input"]["size"]
        self.input_size = (int(height), int(width))
        norm = self.metadata["normalization"]
        self._table = preprocess.lookup_table(norm["mean"], norm["std"])
        self._graphs = {g.get("category"): g for g in self.metadata["graphs"]}
        self._sessions: dict[str | None, Any] = {}
        self.thresholds = self.metadata.get("thresholds") or None

    # ----------------------------------------------------------------------------- properties
    @property
    def format(self) -> str:
        """``onnx`` | ``openvino`` | ``torch``."""
        return str(self.metadata["format"])

    @property
    def per_category(self) -> bool:
        """True when every category has its own graph (the category must then be given)."""
        return None not in self._graphs

    @property
    def categories(self) -> list[str]:
        """The categories the model was trained on (as recorded at export)."""
        return list(self.metadata.get("categories") or [c for c in self._graphs if c is not None])

    # ---------------------------------------------------------------------------- preprocessing
    def preprocess(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """An image file or uint8 RGB array -> (float32 [3, h, w] at the input size, native (H, W)).

        Args:
            image: a path, or a uint8 array [H, W, 3] (RGB) or [H, W] (grey).
        """
        if isinstance(image, (str, Path)):
            array, native_hw = preprocess.decode(image, self.input_size)
        else:
            array = preprocess.as_rgb_array(image)
            native_hw = (int(array.shape[0]), int(array.shape[1]))
        resized = preprocess.resize_uint8(array, self.input_size, self.resize_backend)
        return preprocess.normalise(resized, self._table), native_hw

    # -------------------------------------------------------------------------------- running
    def _session(self, category: str | None) -> tuple[Any, str | None]:
        key = None if None in self._graphs else category
        if key not in self._graphs:
            if category is None:
                raise ExportMetadataError(f"{self.export_dir} holds one graph per category "
                                          f"({', '.join(map(str, self._graphs))}); pass the image's category")
            raise ExportMetadataError(f"{self.export_dir} has no graph for category {category!r}; it has "
                                      f"{', '.join(map(str, self._graphs))}")
        if key not in self._sessions:
            self._sessions[key] = open_session(self.metadata, self._graphs[key], self.export_dir, self.device,
                                               self.num_threads)
        return self._sessions[key], key

    def run(self, batch: np.ndarray, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The graph itself: normalised float32 ``[B, 3, h, w]`` -> (raw maps [B, h', w'], scores [B]).

        Args:
            batch: images already preprocessed (at the input size, normalised).
            category: the images' category (needed when the export has one graph per category).
        """
        expected = (3, *self.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ExportMetadataError(f"expected a batch [B, {expected[0]}, {expected[1]}, {expected[2]}] at the "
                                      f"export's input size, got {tuple(batch.shape)}")
        session, _ = self._session(category)
        return session.run(np.ascontiguousarray(batch, dtype=np.float32), category)

    def predict(self, image: ImageInput, category: str | None = None) -> InferenceResult:
        """Score one image.

        Args:
            image: a path, or a uint8 array [H, W, 3] (RGB) or [H, W] (grey).
            category: the image's category; selects its graph (per-category exports) and its
                thresholds (else the ``all`` thresholds, or the only ones there are).
        """
        return self.predict_batch([image], category)[0]

    def predict_batch(self, images: Sequence[ImageInput], category: str | None = None,
                      batch_size: int = 8) -> list[InferenceResult]:
        """Score several images of one category, ``batch_size`` per graph call.

        Args:
            images: paths or uint8 arrays.
            category: their category (see :meth:`predict`).
            batch_size: images per call of the graph (memory, not results).
        """
        # an export whose graph fixes the batch (metadata input.batch 1) takes one image per call
        step = 1 if self.metadata["input"].get("batch") == 1 else max(1, int(batch_size))
        results: list[InferenceResult] = []
        for start in range(0, len(images), step):
            chunk = list(images[start:start + step])
            prepared = [self.preprocess(image) for image in chunk]
            maps, scores = self.run(np.stack([p[0] for p in prepared]), category)
            for image, (_, native_hw), anomaly_map, score in zip(chunk, prepared, maps, scores):
                results.append(self._result(image, native_hw, anomaly_map, float(score), category))
        return results

    def _result(self, image: ImageInput, native_hw: tuple[int, int], anomaly_map: np.ndarray, score: float,
                category: str | None) -> InferenceResult:
        record = thresholds_for(self.thresholds, category)
        image_threshold = record.get("image") if record else None
        pixel_threshold = record.get("pixel") if record else None
        native_map = preprocess.resize_map(anomaly_map, native_hw)
        normalized = normalised_score(score, record, "image") if record else None
        return InferenceResult(
            score=score,
            label=None if image_threshold is None else int(score >= image_threshold),
            anomaly_map=native_map,
            anomaly_map_at_input=np.asarray(anomaly_map, np.float32),
            mask=None if pixel_threshold is None else native_map >= pixel_threshold,
            normalized_score=None if normalized is None else float(normalized),
            category=category,
            image_threshold=None if image_threshold is None else float(image_threshold),
            pixel_threshold=None if pixel_threshold is None else float(pixel_threshold),
            path=str(image) if isinstance(image, (str, Path)) else None,
        )
