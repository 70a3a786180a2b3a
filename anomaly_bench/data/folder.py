"""Folder: a user's own images in plain folders, no fixed layout.

    normal_dir/      normal images (training; part of them is moved to test unless
                     normal_test_dir is given)
    abnormal_dir/    anomalous test images, flat or in one sub-folder per defect type
    mask_dir/        masks matched by stem: ``<stem>.png`` or ``<stem>_mask.png`` (any image
                     extension), mirroring abnormal_dir's sub-folders if it has them
    normal_test_dir/ optional normal test images

Paths are relative to ``root`` unless absolute. Every anomalous image needs a mask when
``mask_dir`` is given; without ``mask_dir`` only image-level metrics are meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.files import IMAGE_EXTENSIONS, is_ignorable, list_images, list_subdirs, require_dir
from anomaly_bench.data.io import DataError
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, Sample


class Folder(AnomalyDataModule):
    """Custom data from folders.

    Args:
        root: the folder the relative ``*_dir`` paths start from.
        normal_dir: folder of normal images (relative to ``root`` or absolute).
        abnormal_dir: folder of anomalous test images (None: a test set of normals only).
        mask_dir: folder of masks for abnormal_dir, matched by file stem (None: no pixel ground truth).
        normal_test_dir: folder of normal test images; None moves ``normal_test_fraction`` of
            normal_dir (seeded) to the test split.
        normal_test_fraction: share of normal_dir used as normal test images when
            ``normal_test_dir`` is None.
        name: the category name reported in metrics (default: the root folder's name).
        **kwargs: the options every datamodule has (``AnomalyDataModule``: image size, batch size...).
    """

    dataset_name = "Folder"
    default_validation = "none"

    def __init__(
        self,
        root: str | Path,
        *,
        normal_dir: str = "normal",
        abnormal_dir: str | None = "abnormal",
        mask_dir: str | None = None,
        normal_test_dir: str | None = None,
        normal_test_fraction: float = 0.2,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.mask_dir = mask_dir
        self.normal_test_dir = normal_test_dir
        if not 0.0 <= normal_test_fraction < 1.0:
            raise ValueError(f"normal_test_fraction must be in [0, 1), got {normal_test_fraction}")
        self.normal_test_fraction = float(normal_test_fraction)
        self.name = name or self.root.resolve().name

    def _path(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path

    def discover_categories(self) -> list[str]:
        require_dir(self.root, "Folder root")
        require_dir(self._path(self.normal_dir), f"Folder normal_dir ({self.normal_dir!r})")
        return [self.name]

    def index_category(self, category: str) -> list[Sample]:
        normals = list_images(self._path(self.normal_dir), "Folder normal_dir")
        if not normals:
            raise DataError(f"Folder normal_dir {self._path(self.normal_dir)} contains no images")
        samples: list[Sample] = []
        if self.normal_test_dir is not None:
            train = normals
            test_normals = list_images(self._path(self.normal_test_dir), "Folder normal_test_dir")
        else:
            n_test = int(round(self.normal_test_fraction * len(normals)))
            if n_test >= len(normals):
                raise DataError(f"Folder: normal_test_fraction leaves no training images in {self._path(self.normal_dir)}")
            order = np.random.default_rng(self.seed).permutation(len(normals))
            test_idx = set(order[:n_test].tolist())
            train = [p for i, p in enumerate(normals) if i not in test_idx]
            test_normals = [p for i, p in enumerate(normals) if i in test_idx]
        samples += [Sample(str(p), LABEL_NORMAL, category, "good", split="train") for p in train]
        samples += [Sample(str(p), LABEL_NORMAL, category, "good", split="test") for p in test_normals]
        samples += self._abnormal_samples(category)
        if not any(s.split == "test" for s in samples):
            raise DataError("Folder: the test split is empty (give abnormal_dir, normal_test_dir or normal_test_fraction > 0)")
        return samples

    def _abnormal_samples(self, category: str) -> list[Sample]:
        if self.abnormal_dir is None:
            return []
        abnormal = require_dir(self._path(self.abnormal_dir), f"Folder abnormal_dir ({self.abnormal_dir!r})")
        groups = [(sub.name, sub) for sub in list_subdirs(abnormal, "Folder abnormal_dir")]
        groups.append(("abnormal", abnormal))
        masks_root = self._path(self.mask_dir) if self.mask_dir is not None else None
        if masks_root is not None:
            require_dir(masks_root, f"Folder mask_dir ({self.mask_dir!r})")
        samples: list[Sample] = []
        used: set[Path] = set()
        for defect, folder in groups:
            mask_folder = None
            if masks_root is not None:
                mask_folder = masks_root if folder == abnormal else masks_root / defect
            for image in list_images(folder, f"Folder abnormal images ({folder})", allow_subdirs=True):
                mask_paths: tuple[str, ...] = ()
                if mask_folder is not None:
                    mask = _find_mask(mask_folder, image.stem)
                    if mask is None:
                        raise DataError(
                            f"missing mask for anomalous image {image}: expected {mask_folder}/{image.stem}.png "
                            f"or {mask_folder}/{image.stem}_mask.png"
                        )
                    used.add(mask)
                    mask_paths = (str(mask),)
                samples.append(Sample(str(image), LABEL_ANOMALOUS, category, defect, mask_paths, split="test"))
        if masks_root is not None:
            for mask in sorted(masks_root.rglob("*")):
                if mask.is_file() and not is_ignorable(mask) and mask not in used:
                    raise DataError(f"extra mask {mask} in mask_dir matches no anomalous image (matched by stem)")
        return samples


def _find_mask(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}_mask"):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{name}{ext}", folder / f"{name}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None
