"""The datamodule's image preprocessing, without torch: decode, resize, normalise; and maps back.

The standalone inferencer must feed an exported graph exactly what the datamodule fed the model in
training (``anomaly_bench.data.io.decode_image`` + ``anomaly_bench.data.transforms.to_tensor``):

- decode with Pillow to RGB (grey replicated; 16-bit grey scaled to 8 bit; JPEGs decoded in
  Pillow's ``draft`` mode at the smallest 1/2^k scale still at least the input size);
- resize to the input size: area averaging when the image shrinks (height x width smaller),
  bilinear when it grows;
- normalise every uint8 level ``v`` to ``(v / 255 - mean) / std`` in float32, channels first.

Resizing uses OpenCV when it is importable (the call the datamodule makes, so the result is
bit-identical); otherwise a NumPy implementation of the same rule, which agrees with OpenCV within
one uint8 level when both sides shrink or both grow (OpenCV rounds in fixed point). Only NumPy and
Pillow are needed. ``tests/deploy/test_preprocess.py`` pins both against the datamodule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.data.decoding import DataError, decode_rgb

RESIZE_BACKENDS = ("auto", "opencv", "numpy")


class PreprocessError(DataError):
    """An input image cannot be read or has an unusable shape; the message names it."""


# ------------------------------------------------------------------------------------- decoding
def decode(path: str | Path, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file to uint8 RGB exactly as the datamodule does (``data.decoding.decode_rgb``:
    Pillow, JPEGs in draft mode for ``size_hw``, the same pixel limit).

    Args:
        path: the image file.
        size_hw: the size it will be resized to; None decodes at the native size.

    Returns:
        (uint8 RGB [h, w, 3] before resizing, (H, W) native size).
    """
    try:
        return decode_rgb(path, size_hw)
    except PreprocessError:
        raise
    except DataError as err:
        raise PreprocessError(str(err)) from None


def as_rgb_array(image: Any, where: str = "image") -> np.ndarray:
    """A caller's array as uint8 RGB [H, W, 3]: [H, W] grey is replicated; anything else is an error.

    Args:
        image: a NumPy array (uint8 [H, W, 3] or [H, W]).
        where: how to name the input in errors.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise PreprocessError(f"{where}: expected a uint8 array (0..255), got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise PreprocessError(f"{where}: expected an RGB array [H, W, 3] (or grey [H, W]), got shape {array.shape}")
    return np.ascontiguousarray(array)


# ------------------------------------------------------------------------------------- resizing
def _opencv() -> Any | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize_uint8(image: np.ndarray, size_hw: tuple[int, int], backend: str = "auto") -> np.ndarray:
    """Resize uint8 [H, W, 3] to ``size_hw``: area averaging when shrinking, bilinear when growing.

    Args:
        image: uint8 RGB [H, W, 3].
        size_hw: (height, width) wanted.
        backend: ``auto`` (OpenCV if importable, else NumPy), ``opencv`` or ``numpy``.
    """
    if backend not in RESIZE_BACKENDS:
        raise PreprocessError(f"resize backend must be one of {RESIZE_BACKENDS}, got {backend!r}")
    h, w = int(size_hw[0]), int(size_hw[1])
    if tuple(image.shape[:2]) == (h, w):
        return np.ascontiguousarray(image)
    shrinking = h * w < image.shape[0] * image.shape[1]
    cv2 = _opencv() if backend != "numpy" else None
    if backend == "opencv" and cv2 is None:
        raise PreprocessError("resize backend 'opencv' asked for, but OpenCV (cv2) is not installed")
    if cv2 is not None:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    matrices = [(_area_weights if shrinking else _linear_weights)(n_in, n_out)
                for n_in, n_out in ((image.shape[0], h), (image.shape[1], w))]
    resized = np.einsum("ij,jkc,lk->ilc", matrices[0], image.astype(np.float64), matrices[1], optimize=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: output i averages input [i·s, (i+1)·s), s = n_in / n_out, by overlap length."""
    scale = n_in / n_out
    edges = np.arange(n_out + 1) * scale
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, end = edges[i], edges[i + 1]
        for j in range(int(np.floor(start)), min(int(np.ceil(end)), n_in)):
            weights[i, j] = min(end, j + 1) - max(start, j)
    return weights / weights.sum(axis=1, keepdims=True)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear taps with pixel-centre alignment and edge clamping (OpenCV's rule)."""
    return _bilinear_taps(n_in, n_out, clamp_low=True)


def _bilinear_taps(n_in: int, n_out: int, clamp_low: bool) -> np.ndarray:
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if clamp_low:
        source = np.maximum(source, 0.0)
    left = np.floor(source).astype(np.int64)
    frac = source - left
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, np.clip(left, 0, n_in - 1)), 1.0 - frac)
    np.add.at(weights, (rows, np.clip(left + 1, 0, n_in - 1)), frac)
    return weights


def resize_map(anomaly_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map [h, w] to ``size_hw``, as ``torch.nn.functional.interpolate``
    (``bilinear``, ``align_corners=False``, no antialias) does for the score writer's masks.

    Args:
        anomaly_map: float [h, w].
        size_hw: (height, width) wanted.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if tuple(anomaly_map.shape) == (h, w):
        return anomaly_map.astype(np.float32, copy=True)
    rows = _bilinear_taps(anomaly_map.shape[0], h, clamp_low=True)
    cols = _bilinear_taps(anomaly_map.shape[1], w, clamp_low=True)
    return (rows @ anomaly_map.astype(np.float64) @ cols.T).astype(np.float32)


# -------------------------------------------------------------------------------- normalisation
def lookup_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 [3, 256]: the normalised value of every uint8 level per channel, computed in float32
    exactly as the datamodule's table (``(level / 255 - mean) / std``).

    Args:
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel standard deviation on the [0, 1] scale.
    """
    levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    mean_array = np.asarray(mean, np.float32)[:, None]
    std_array = np.asarray(std, np.float32)[:, None]
    if mean_array.shape != (3, 1) or std_array.shape != (3, 1) or not (std_array > 0).all():
        raise PreprocessError(f"normalisation needs 3 means and 3 positive stds, got mean={mean}, std={std}")
    return np.ascontiguousarray((levels - mean_array) / std_array)


def normalise(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] through a ``lookup_table``.

    Args:
        image: uint8 RGB [H, W, 3] at the model's input size.
        table: float32 [3, 256] from :func:`lookup_table`.
    """
    chw = image.transpose(2, 0, 1)
    return table[np.arange(3)[:, None, None], chw]
