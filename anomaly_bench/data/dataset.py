"""The one torch Dataset behind every layout: index entries -> decoded, cached, augmented items."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_bench.data.cache import SampleCache
from anomaly_bench.data.io import decode_image
from anomaly_bench.data.io import DataError, read_ground_truth
from anomaly_bench.data.transforms import to_tensor
from anomaly_bench.types import DefectSpec, Sample

# category -> {pixel value -> DefectSpec}; MVTec LOCO only (from defects_config.json)
DefectTable = Mapping[str, Mapping[int, DefectSpec]]


def defect_specs(
    category: str, mask_paths: Sequence[str], values: Sequence[int], table: Mapping[int, DefectSpec]
) -> tuple[DefectSpec, ...]:
    """The ``DefectSpec`` of each LOCO mask file, looked up by the file's pixel value.

    Args:
        category: the image's category (named in the error).
        mask_paths: the image's mask files.
        values: each file's single non-zero value (``io.read_mask_files(single_value_per_file=True)``).
        table: that category's ``defects_config.json`` entries by pixel value.
    """
    specs = []
    for path, value in zip(mask_paths, values):
        if value not in table:
            raise DataError(
                f"mask {path} has pixel value {value}, which is not a pixel_value in the "
                f"defects_config.json of category {category!r} (known: {sorted(table)})"
            )
        specs.append(table[value])
    return tuple(specs)


class AnomalyDataset(Dataset):
    """Items are dicts with the ``Batch`` field names (see ``anomaly_bench.types.collate_items``).

    Args:
        samples: index entries (paths, labels) from a layout's indexer.
        image_size: (H, W) the model sees.
        normalization: ``imagenet`` | ``none`` | ``minus_one_one``.
        augment: an albumentations pipeline applied to uint8 image + mask (train only), or None.
        cache: decoded-sample cache (None = no caching).
        defect_table: LOCO ``defects_config.json`` entries per category; when given, every mask file
            must hold exactly one non-zero value that appears in the table.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: tuple[int, int],
        normalization: str = "imagenet",
        augment: Callable[..., dict[str, Any]] | None = None,
        cache: SampleCache | None = None,
        defect_table: DefectTable | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.augment = augment
        self.cache = cache
        self.defect_table = defect_table

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], list[int]]:
        """Resized uint8 image, binary mask, native size and mask-file values (cached)."""
        if self.cache is not None:
            hit = self.cache.get(index)
            if hit is not None:
                return hit
        sample = self.samples[index]
        image, native_hw = decode_image(sample.image_path, self.image_size)
        if sample.mask_paths:
            loco = self.defect_table is not None or bool(sample.defects)
            expected = [spec.pixel_value for spec in sample.defects] if sample.defects else None
            mask, values = read_ground_truth(sample.mask_paths, self.image_size, native_hw,
                                             single_value_per_file=loco, expected_values=expected)
        else:
            mask, values = np.zeros(self.image_size, dtype=np.uint8), []
        if self.cache is not None:
            self.cache.put(index, image, mask, native_hw, values)
        return image, mask, native_hw, values

    def _defects(self, sample: Sample, values: list[int]) -> tuple[DefectSpec, ...]:
        if sample.defects or self.defect_table is None:
            return tuple(sample.defects)
        return defect_specs(sample.category, sample.mask_paths, values, self.defect_table.get(sample.category, {}))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, mask, native_hw, values = self.load(index)
        values = list(values)[: len(sample.mask_paths)]
        if self.augment is not None:
            # copies: cached arrays are shared with other workers and must never be modified
            out = self.augment(image=image.copy(), mask=mask.copy())
            image, mask = out["image"], out["mask"]
            if tuple(image.shape[:2]) != self.image_size:
                raise DataError(
                    f"train_augmentations changed the image size to {image.shape[:2]}; "
                    f"expected {self.image_size} (use size-preserving transforms)"
                )
        return {
            "image": to_tensor(image, self.normalization),
            "label": sample.label,
            "mask": torch.from_numpy(np.ascontiguousarray(mask) != 0).float(),
            "orig_size": native_hw,
            "category": sample.category,
            "defect": sample.defect,
            "subset": sample.subset,
            "path": sample.image_path,
            "mask_paths": tuple(sample.mask_paths),
            "defects": self._defects(sample, values),
        }
