"""Reading images and masks from disk, with errors that name the file.

One place for decoding images and masks, so that loaders, the Evaluator (native-resolution ground
truth) and the visualiser agree on what a file contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from anomaly_bench.data.decoding import (  # noqa: F401  (re-exported: every loader imports them from here)
    MAX_IMAGE_PIXELS_ENV,
    DataError,
    decode_rgb,
    max_image_pixels,
)

cv2.setNumThreads(0)  # let DataLoader workers parallelise, not OpenCV inside each worker


def decode_image(path: str | Path, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to uint8 RGB resized to ``size_hw`` (None keeps the native size).

    ``decoding.decode_rgb`` (Pillow, JPEG draft mode, pixel limit) then ``resize_image``. Returns
    ``(image [h, w, 3], (H, W) native size)``; DataError naming the file when it cannot be read.
    """
    array, native_hw = decode_rgb(path, size_hw)
    return resize_image(array, size_hw), native_hw


def resize_image(image: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    if size_hw is None or tuple(image.shape[:2]) == tuple(size_hw):
        return np.ascontiguousarray(image)
    h, w = size_hw
    shrinking = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3] at its native size (``decode_image`` without resizing)."""
    return decode_image(path, None)[0]


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a ground-truth mask to a single-channel array of its raw values [H, W].

    Raw values are kept (VisA class ids, LOCO pixel values); metrics binarise with ``!= 0``.
    Accepted: single-channel files (8 or 16 bit), palette PNGs (their palette indices), and
    RGB / RGBA files whose colour channels are equal at every pixel (grey masks saved in colour,
    e.g. by ``cv2.imwrite`` of a 3-channel array; alpha constant or equal to the grey value). Any
    other colour image is a ``DataError``: a photo saved as a mask would otherwise count every
    non-black pixel as a defect.

    Args:
        path: the mask file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.size == 0:
        raise DataError(f"cannot decode mask (unreadable or truncated): {path}")
    if mask.ndim == 3:
        mask = _single_channel(mask, path)
    return mask


def _single_channel(mask: np.ndarray, path: Path) -> np.ndarray:
    """A colour-decoded mask -> one channel: palette indices, or the grey value of a grey image."""
    palette = _palette_indices(path)
    if palette is not None:
        return palette
    colour = mask[:, :, :3] if mask.shape[2] >= 3 else mask
    differ = (colour != colour[:, :, :1]).any(axis=2)
    if differ.any():
        raise DataError(
            f"mask {path} is a colour image ({mask.shape[2]} channels, {int(differ.sum())} of "
            f"{differ.size} pixels not grey); expected a single-channel mask or an RGB/RGBA one whose "
            "colour channels are equal at every pixel"
        )
    grey = np.ascontiguousarray(colour[:, :, 0])
    if mask.shape[2] == 4:
        alpha = mask[:, :, 3]
        if (alpha != alpha.flat[0]).any() and not np.array_equal(alpha, grey):
            # a mask drawn as transparency would read as empty here: refuse rather than guess
            raise DataError(f"mask {path} keeps information in its alpha channel (not constant, not the grey "
                            "value); expected a single-channel mask or a grey RGB/RGBA one with plain alpha")
    return grey


def _palette_indices(path: Path) -> np.ndarray | None:
    """Palette ("P" mode) PNGs hold class ids as indices; OpenCV expands them to colours."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            return np.array(im)
    except Exception:  # not readable by Pillow: the OpenCV decode stands
        return None


def read_mask_files(
    paths: Sequence[str | Path],
    native_hw: tuple[int, int] | None = None,
    single_value_per_file: bool = False,
    expected_values: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Read every ground-truth mask file of one image: the one reader behind the datasets, the
    Evaluator and the visualiser.

    Each file goes through :func:`read_mask` and must have the image's native size
    (``native_hw``; without it, the size of the first file): a mismatch means mis-paired files.

    Args:
        paths: the image's mask files (one for MVTec-style layouts, one per region for LOCO).
        native_hw: (H, W) of the image on disk, None to take the first mask's size.
        single_value_per_file: every file must hold exactly one non-zero value (MVTec LOCO channels).
        expected_values: with ``single_value_per_file``, the value each file must hold (its
            ``DefectSpec.pixel_value``); None accepts any single value.

    Returns:
        (binary masks [H, W] bool per file, value per file): a file's value is its single non-zero
        value for LOCO, else its largest value (0 for an empty file).
    """
    channels: list[np.ndarray] = []
    values: list[int] = []
    for number, path in enumerate(paths):
        raw = read_mask(path)
        if native_hw is None:
            native_hw = (int(raw.shape[0]), int(raw.shape[1]))
        if tuple(raw.shape[:2]) != tuple(native_hw):
            raise DataError(
                f"mask {path} has size {raw.shape[1]}x{raw.shape[0]} (WxH) but its image has "
                f"{native_hw[1]}x{native_hw[0]}; a mask must have the native size of its image"
            )
        binary = raw != 0
        if single_value_per_file:
            value = _single_value(raw, binary, path)
            expected = list(expected_values or [])[number : number + 1]
            if expected and value != int(expected[0]):
                raise DataError(
                    f"MVTec LOCO mask {path} holds pixel value {value} but its defect expects {int(expected[0])} "
                    "(defects_config.json pixel_value)"
                )
        else:
            value = int(raw.max()) if binary.any() else 0
        channels.append(binary)
        values.append(value)
    return channels, values


def _single_value(raw: np.ndarray, binary: np.ndarray, path: str | Path) -> int:
    """The one non-zero value of a MVTec LOCO mask channel (DataError if none or several)."""
    present = np.unique(raw[binary])
    if present.size != 1:
        raise DataError(
            f"MVTec LOCO mask {path} must contain exactly one non-zero pixel value, found "
            f"{present.tolist()}"
        )
    return int(present[0])


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask to ``size_hw`` (None: unchanged); returns bool."""
    if size_hw is None or tuple(mask.shape[:2]) == tuple(size_hw):
        return mask.astype(bool, copy=False)
    resized = cv2.resize(mask.astype(np.uint8), (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_NEAREST)
    return resized != 0


def read_ground_truth(
    paths: Sequence[str | Path],
    size_hw: tuple[int, int] | None = None,
    native_hw: tuple[int, int] | None = None,
    single_value_per_file: bool = False,
    expected_values: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Binary ground-truth mask of one image (union of its files) at ``size_hw``, plus each file's value.

    The union is resized nearest-neighbour (identical to uniting the resized files).

    Args:
        paths: the image's mask files; empty means a normal image (then ``size_hw`` or
            ``native_hw`` gives the size).
        size_hw: (H, W) wanted; None keeps the native size.
        native_hw: (H, W) of the image on disk (checked against every file); None: the first file's.
        single_value_per_file: see :func:`read_mask_files`.
        expected_values: see :func:`read_mask_files`.

    Returns:
        (mask [H, W] uint8 in {0, 1}, value per file).
    """
    channels, values = read_mask_files(paths, native_hw, single_value_per_file, expected_values)
    if not channels:
        size = size_hw if size_hw is not None else native_hw
        if size is None:
            raise DataError("read_ground_truth: no mask files and no size given")
        return np.zeros(tuple(size), dtype=np.uint8), []
    union = np.logical_or.reduce(channels)
    return resize_mask(union, size_hw).astype(np.uint8), values


def image_size_on_disk(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, decoding only the header where the format allows it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError as err:
        raise DataError(f"image file not found: {path}") from err
    except Exception as err:  # PIL raises several types for corrupt files
        raise DataError(f"cannot read image header: {path} ({err})") from err
    return height, width
