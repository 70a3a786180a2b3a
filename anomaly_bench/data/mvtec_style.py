"""Indexer for the MVTec-AD-style tree shared by MVTec AD, MPDD, GoodsAD and prepared VisA.

    <category>/train/good/*.<ext>
    <category>/test/good/*.<ext>                 normal test images, no masks
    <category>/test/<defect>/*.<ext>             anomalous test images
    <category>/ground_truth/<defect>/<mask>.png  one mask per anomalous image

Masks are paired by explicit stem mapping (``mask_name(stem)``), never by sorted order, and
a missing or an extra mask is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from anomaly_bench.data.files import is_ignorable, list_images, list_subdirs, require_dir
from anomaly_bench.data.io import DataError
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, Sample

NORMAL_FOLDER = "good"


def mask_with_suffix(stem: str) -> str:
    """MVTec AD / MPDD: ``000.png`` -> ``000_mask.png``."""
    return f"{stem}_mask.png"


def mask_same_stem(stem: str) -> str:
    """GoodsAD / prepared VisA: ``000.JPG`` -> ``000.png``."""
    return f"{stem}.png"


def has_mvtec_style_category(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def discover_mvtec_style_categories(root: Path, dataset: str) -> list[str]:
    """Category folders under ``root`` (those with ``train/`` and ``test/``)."""
    if not root.is_dir():
        raise DataError(f"{dataset} root {root} does not exist; expected <root>/<category>/train/good, test/, ground_truth/")
    categories = [p.name for p in list_subdirs(root, f"{dataset} root") if has_mvtec_style_category(p)]
    if not categories:
        found = [p.name for p in list_subdirs(root, f"{dataset} root")]
        raise DataError(
            f"{dataset} root {root} has no category folders with train/ and test/ inside "
            f"(expected <root>/<category>/train/good, <root>/<category>/test/<defect>, "
            f"<root>/<category>/ground_truth/<defect>); sub-folders found: {found or 'none'}"
        )
    return categories


def index_mvtec_style(
    category_dir: Path,
    category: str,
    mask_name: Callable[[str], str],
    dataset: str,
    extra_splits: tuple[str, ...] = (),
) -> list[Sample]:
    """Samples of one category: train normals, test normals and anomalies with their masks.

    ``extra_splits`` lists further folders holding only normal images (e.g. ``validation``).
    """
    require_dir(category_dir, f"{dataset} category folder {category!r}")
    samples: list[Sample] = []
    train_images = list_images(category_dir / "train" / NORMAL_FOLDER, f"{dataset} training images of {category!r}")
    if not train_images:
        raise DataError(f"{dataset} category {category!r} has no training images in {category_dir / 'train' / NORMAL_FOLDER}")
    samples += [Sample(str(p), LABEL_NORMAL, category, NORMAL_FOLDER, split="train") for p in train_images]
    for split in extra_splits:
        folder = category_dir / split / NORMAL_FOLDER
        if folder.is_dir():
            samples += [Sample(str(p), LABEL_NORMAL, category, NORMAL_FOLDER, split=split)
                        for p in list_images(folder, f"{dataset} {split} images of {category!r}")]

    test_dir = require_dir(category_dir / "test", f"{dataset} test folder of {category!r}")
    gt_dir = category_dir / "ground_truth"
    used_masks: set[Path] = set()
    n_test = 0
    for defect_dir in list_subdirs(test_dir, f"{dataset} test folder of {category!r}"):
        defect = defect_dir.name
        images = list_images(defect_dir, f"{dataset} test images {category}/{defect}")
        n_test += len(images)
        if defect == NORMAL_FOLDER:
            samples += [Sample(str(p), LABEL_NORMAL, category, defect, split="test") for p in images]
            continue
        for image in images:
            mask = gt_dir / defect / mask_name(image.stem)
            if not mask.is_file():
                raise DataError(
                    f"missing mask for anomalous test image {image}: expected {mask}"
                )
            used_masks.add(mask)
            samples.append(Sample(str(image), LABEL_ANOMALOUS, category, defect, (str(mask),), split="test"))
    if n_test == 0:
        raise DataError(f"{dataset} category {category!r} has no test images in {test_dir}")
    _check_no_extra_masks(gt_dir, used_masks)
    return samples


def _check_no_extra_masks(gt_dir: Path, used: set[Path]) -> None:
    """A mask without its image means a mis-named or missing image: report it, don't drop it."""
    if not gt_dir.is_dir():
        return
    for mask in sorted(gt_dir.rglob("*")):
        if mask.is_dir() or is_ignorable(mask) or any(part.startswith(".") for part in mask.relative_to(gt_dir).parts):
            continue
        if mask not in used:
            raise DataError(
                f"extra mask {mask} has no matching anomalous test image "
                f"(expected an image test/{mask.parent.name}/<stem>.* for this mask)"
            )
