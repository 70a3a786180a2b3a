"""Decoding image files with Pillow: the one decoder of the datamodules and the standalone inferencer.

Needs only NumPy and Pillow (no torch, no OpenCV), so ``anomaly_bench.deploy`` can decode exactly as
training did. Images are decoded with Pillow, not OpenCV: OpenCV decodes a truncated JPEG without an
error (grey fill and a printed warning), so a damaged file would silently become training data;
Pillow raises. Pillow's JPEG ``draft`` mode decodes large images (GoodsAD) directly at 1/2..1/8 scale.
Resizing is the caller's (``io.resize_image``; the inferencer has a NumPy fallback).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable, or not what the layout expects."""


# Pillow's decompression-bomb guard stays on (never switched off for the whole process): a limit
# far above any public anomaly-detection image (GoodsAD's largest are ~12 Mpx), configurable.
MAX_IMAGE_PIXELS_ENV = "ANOMALY_BENCH_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own error limit: 2 x Image.MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    """The largest image (width x height) the loaders decode; ``$ANOMALY_BENCH_MAX_IMAGE_PIXELS`` sets it."""
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise DataError(f"${MAX_IMAGE_PIXELS_ENV}={value!r} must be a whole number of pixels") from None
    if limit <= 0:
        raise DataError(f"${MAX_IMAGE_PIXELS_ENV}={value!r} must be positive")
    return limit


def rgb_array(im: Image.Image) -> np.ndarray:
    """Pillow image of any common mode -> uint8 RGB [H, W, 3] (grayscale replicated, 16 bit scaled)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float32)
        scale = 255.0 / 65535.0 if im.mode.startswith("I;16") else 255.0 / max(float(arr.max()), 1.0)
        gray = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)  # a writable copy (the cache and augmentations may write to it)


def decode_rgb(path: str | Path, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file to uint8 RGB, JPEGs in draft mode for ``size_hw`` (not resized here).

    Args:
        path: the image file.
        size_hw: the size it will be resized to (a large JPEG is decoded at the smallest 1/2^k
            scale still at least that); None decodes at the native size.

    Returns ``(image [h, w, 3], (H, W) native size)``. Raises DataError naming the file when it is
    missing, not an image, truncated, or larger than ``max_image_pixels()``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # our own limit below replaces Pillow's warning band; its hard error still applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                native_w, native_h = im.size
                if native_w * native_h > limit:
                    raise DataError(
                        f"image {path} has {native_w}x{native_h} = {native_w * native_h} pixels, more than the "
                        f"limit of {limit}; set ${MAX_IMAGE_PIXELS_ENV} to a larger number if the file is genuine"
                    )
                if size_hw is not None and im.format == "JPEG":
                    im.draft("RGB", (size_hw[1], size_hw[0]))
                im.load()
                array = rgb_array(im)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} exceeds Pillow's decompression-bomb limit ({err}); set "
                        f"${MAX_IMAGE_PIXELS_ENV} only if the file is genuine") from None
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"cannot decode image (unreadable or truncated): {path} ({err})") from err
    return array, (native_h, native_w)
