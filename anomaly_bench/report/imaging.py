"""Small inline pictures for the gallery: the input with its ground truth outlined, and a method's
map as a colour overlay, each a JPEG ``data:`` URI of a few kilobytes."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 80


def data_uri_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """``data:image/jpeg;base64,...`` of an RGB uint8 image.

    Args:
        rgb: [H, W, 3] uint8.
        quality: JPEG quality (1-100).
    """
    ok, buffer = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode("ascii")


def _fit(height: int, width: int, side: int) -> tuple[int, int]:
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))  # cv2's (w, h)


def load_thumbnail(path: Path | None, side: int) -> np.ndarray | None:
    """The saved input thumbnail resized to ``side`` (long side), RGB, or None when absent.

    Args:
        path: a gallery ``<id>.png``.
        side: long side in pixels.
    """
    if path is None or not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, _fit(*image.shape[:2], side), interpolation=cv2.INTER_AREA)


def with_outline(image: np.ndarray, mask_path: Path | None) -> np.ndarray:
    """The image with the ground-truth regions outlined in red (unchanged without a mask).

    Args:
        image: RGB uint8.
        mask_path: a gallery ``<id>_mask.png`` or None.
    """
    if mask_path is None or not mask_path.is_file():
        return image
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return image
    mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = image.copy()
    cv2.drawContours(out, contours, -1, (255, 0, 0), 1)
    return out


def overlay(
    anomaly_map: np.ndarray, display_range: tuple[float, float], base: np.ndarray | None, side: int
) -> np.ndarray:
    """The map coloured (jet) over the input, with the method's own display range for the category.

    Args:
        anomaly_map: raw map [h, w].
        display_range: (low, high) map values mapped to the ends of the colour scale.
        base: the input thumbnail (RGB) or None (then the heat map alone).
        side: long side in pixels when there is no base image.
    """
    size = (base.shape[1], base.shape[0]) if base is not None else _fit(*anomaly_map.shape, side)
    resized = cv2.resize(anomaly_map.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    low, high = display_range
    norm = np.clip((resized - low) / max(high - low, 1e-12), 0.0, 1.0)
    heat = cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    if base is None:
        return heat
    return (0.5 * base + 0.5 * heat).astype(np.uint8)
