"""Reading images and masks from disk, with errors that name the file.

One place for decoding so that loaders, the Evaluator (native-resolution ground truth) and the
visualiser agree on what a file contains.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

cv2.setNumThreads(0)  # let DataLoader workers parallelise, not OpenCV inside each worker


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable, or not what the layout expects."""


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3] at its native size; grayscale and 16 bit converted.

    The same Pillow decoder as the datamodules (``decode.decode_image``): a truncated file is an
    error here too, never grey-filled pixels.
    """
    from anomaly_bench.data.decode import decode_image  # decode imports this module

    return decode_image(path, None)[0]


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a ground-truth mask to a single-channel array of its raw values [H, W].

    Raw values are kept (VisA class ids, LOCO pixel values); metrics binarise with ``!= 0``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.size == 0:
        raise DataError(f"cannot decode mask (unreadable or truncated): {path}")
    if mask.ndim == 3:
        mask = mask.max(axis=2)  # RGB-saved masks: any non-zero channel marks the pixel
    return mask


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
