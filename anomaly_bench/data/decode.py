"""Decode + resize one sample (image and its masks) to the model resolution, checking the files.

Images are decoded with Pillow, not OpenCV (``io.read_image_rgb`` delegates here): OpenCV decodes a
truncated JPEG without an error (it fills the missing part with grey and only prints a warning), so a damaged file would
silently become training data. Pillow raises on truncation, and its JPEG ``draft`` mode decodes
3000-px GoodsAD images directly at 1/2..1/8 scale, which makes the first epoch several times faster.
Masks go through ``io.read_mask`` so that the loaders and the Evaluator see the same raw values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from anomaly_bench.data.io import DataError, read_mask

Image.MAX_IMAGE_PIXELS = None  # dataset images are trusted local files, some are > 89 Mpx


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Pillow image of any common mode -> uint8 RGB [H, W, 3] (grayscale is replicated)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float32)
        scale = 255.0 / 65535.0 if im.mode.startswith("I;16") else 255.0 / max(float(arr.max()), 1.0)
        gray = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)  # a writable copy (the cache and augmentations may write to it)


def decode_image(path: str | Path, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to uint8 RGB resized to ``size_hw`` (None keeps the native size).

    Returns ``(image [h, w, 3], (H, W) native size)``. Raises DataError naming the file when it is
    missing, not an image, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            native_w, native_h = im.size
            if size_hw is not None and im.format == "JPEG":
                # decode at the smallest 1/2^k scale that is still >= the target size
                im.draft("RGB", (size_hw[1], size_hw[0]))
            im.load()
            array = _to_rgb_array(im)
    except DataError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"cannot decode image (unreadable or truncated): {path} ({err})") from err
    return resize_image(array, size_hw), (native_h, native_w)


def resize_image(image: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    if size_hw is None or tuple(image.shape[:2]) == tuple(size_hw):
        return np.ascontiguousarray(image)
    h, w = size_hw
    shrinking = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_masks(
    paths: Sequence[str | Path],
    native_hw: tuple[int, int],
    size_hw: tuple[int, int] | None,
    single_value_per_file: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Union of the mask files as a binary uint8 mask at ``size_hw`` (nearest), plus each file's value.

    The value of a file is its single non-zero pixel value (MVTec LOCO channels must hold exactly
    one); for other layouts it is the largest value (VisA raw class ids may differ within a file).
    Every mask must have the native size of its image: a mismatch means mis-paired files.
    """
    out_hw = tuple(size_hw) if size_hw is not None else tuple(native_hw)
    union = np.zeros(native_hw, dtype=bool)
    values: list[int] = []
    for path in paths:
        raw = read_mask(path)
        if tuple(raw.shape[:2]) != tuple(native_hw):
            raise DataError(
                f"mask {path} has size {raw.shape[1]}x{raw.shape[0]} (WxH) but its image has "
                f"{native_hw[1]}x{native_hw[0]}; a mask must have the native size of its image"
            )
        nonzero = raw != 0
        union |= nonzero
        if single_value_per_file:
            values.append(_single_value(raw, path))
        else:
            values.append(int(raw.max()) if nonzero.any() else 0)
    mask = union.astype(np.uint8)
    if mask.shape != out_hw:
        mask = cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)
    return mask, values


def _single_value(raw: np.ndarray, path: str | Path) -> int:
    """The one non-zero value of a MVTec LOCO mask channel (DataError if none or several)."""
    present = np.unique(raw)
    present = present[present != 0]
    if present.size != 1:
        raise DataError(
            f"MVTec LOCO mask {path} must contain exactly one non-zero pixel value, found "
            f"{present.tolist()}"
        )
    return int(present[0])
