"""Input normalisation (chosen by the model) and train-time augmentations (chosen in YAML).

Augmentation specs use the same shape as every other configurable object in our configs::

    train_augmentations:
      - class_path: HorizontalFlip          # a name in ``albumentations`` or a dotted path
        init_args: {p: 0.5}
      - class_path: Rotate
        init_args: {limit: 10, p: 0.5}

A bare string (``- VerticalFlip``) means the class with its defaults; a ready albumentations
transform object is accepted too (Python use). They are applied to the uint8 image and its mask
together (geometric transforms move the mask with the image), to the training split only.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np
import torch

from anomaly_bench.data.io import DataError

NORMALIZATIONS = ("imagenet", "none", "minus_one_one")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _lookup_table(normalization: str) -> np.ndarray:
    """float32 [3, 256]: the normalised value of every uint8 level, per channel."""
    levels = np.arange(256, dtype=np.float32)[None, :] / 255.0
    if normalization == "imagenet":
        mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None]
        std = np.asarray(IMAGENET_STD, np.float32)[:, None]
        return np.ascontiguousarray((levels - mean) / std)
    if normalization == "minus_one_one":
        return np.repeat(levels * 2.0 - 1.0, 3, axis=0)
    if normalization == "none":
        return np.repeat(levels, 3, axis=0)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


_TABLES = {name: _lookup_table(name) for name in NORMALIZATIONS}
_CHANNEL = np.arange(3)[:, None, None]


def to_tensor(image: np.ndarray, normalization: str) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] normalised as the model expects.

    A table lookup in NumPy instead of torch arithmetic: one pass, and no intra-op thread pool
    (torch's threads fight each other when the loader runs in the main process on few cores).
    """
    if normalization not in _TABLES:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    chw = image.transpose(2, 0, 1)
    return torch.from_numpy(_TABLES[normalization][_CHANNEL, chw])


def denormalize(image: torch.Tensor, normalization: str) -> torch.Tensor:
    """Inverse of ``to_tensor`` up to the uint8 rounding: float [.., 3, H, W] back to [0, 1]."""
    if normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
        return image * std + mean
    if normalization == "minus_one_one":
        return (image + 1.0) / 2.0
    return image


def _resolve_class(name: str) -> type:
    import albumentations as A

    if "." not in name:
        cls = getattr(A, name, None)
        if cls is None:
            raise DataError(f"unknown albumentations transform {name!r} in train_augmentations")
        return cls
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise DataError(f"cannot import transform {name!r} in train_augmentations: {err}") from err


def _build_one(spec: Any) -> Any:
    if isinstance(spec, str):
        return _resolve_class(spec)()
    if isinstance(spec, dict):
        unknown = set(spec) - {"class_path", "init_args"}
        if "class_path" not in spec or unknown:
            raise DataError(
                f"train_augmentations entry {spec!r} must look like "
                "{class_path: HorizontalFlip, init_args: {p: 0.5}}"
            )
        cls = _resolve_class(str(spec["class_path"]))
        kwargs = dict(spec.get("init_args") or {})
        if "transforms" in kwargs:  # OneOf / SomeOf / Sequential hold nested specs
            kwargs["transforms"] = [_build_one(s) for s in kwargs["transforms"]]
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise DataError(f"bad init_args for {spec['class_path']}: {err}") from err
    if hasattr(spec, "__call__"):
        return spec  # an albumentations transform object
    raise DataError(f"cannot build an augmentation from {spec!r}")


def build_augmentations(specs: Sequence[Any] | Any | None) -> Any | None:
    """An ``albumentations.Compose`` from the specs, or None when there are none."""
    if specs is None:
        return None
    import albumentations as A

    if isinstance(specs, A.BaseCompose):
        return specs
    if isinstance(specs, (str, dict)) or not isinstance(specs, Sequence):
        specs = [specs]
    if len(specs) == 0:
        return None
    return A.Compose([_build_one(s) for s in specs])
