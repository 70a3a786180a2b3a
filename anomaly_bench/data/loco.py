"""MVTec LOCO AD: logical and structural anomalies, one mask file per annotated defect region.

    <root>/<category>/defects_config.json
    <root>/<category>/{train,validation}/good/NNN.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
    <root>/<category>/ground_truth/{logical,structural}_anomalies/NNN/000.png, 001.png, ...

Each mask file ("channel") holds exactly one non-zero value, the ``pixel_value`` of a
``defects_config.json`` entry; the batch carries the files (``mask_paths``) and their entries
(``defects``: ``DefectSpec`` with the saturation threshold) so the metrics can compute sPRO; the
binary ``mask`` is the union of the channels. Each anomalous sample carries its ``subset``
(``logical`` | ``structural``), which the metrics report apart. ``validation`` defaults to the
official ``validation/`` split (normal images only).
"""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.dataset import DefectTable
from anomaly_bench.data.files import is_ignorable, list_images, list_subdirs, require_dir
from anomaly_bench.data.io import DataError
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, DefectSpec, Sample

ANOMALY_FOLDERS = ("logical_anomalies", "structural_anomalies")
# test folder -> Sample.subset: the metrics report logical and structural anomalies apart
SUBSET_OF_FOLDER = {"logical_anomalies": "logical", "structural_anomalies": "structural"}
TEST_FOLDERS = ("good", *ANOMALY_FOLDERS)
CONFIG_NAME = "defects_config.json"


def read_defects_config(path: Path) -> dict[int, DefectSpec]:
    """``defects_config.json`` -> {pixel_value: DefectSpec}, validating every entry."""
    if not path.is_file():
        raise DataError(f"MVTec LOCO defects config not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(entries, list):
        raise DataError(f"{path} must hold a list of defect entries, got {type(entries).__name__}")
    table: dict[int, DefectSpec] = {}
    for i, entry in enumerate(entries):
        keys = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            raise DataError(f"{path} entry {i} must have the keys {keys}, got {entry!r}")
        value = int(entry["pixel_value"])
        if not 1 <= value <= 255:
            raise DataError(f"{path} entry {i} ({entry['defect_name']}): pixel_value {value} not in 1..255")
        if value in table:
            raise DataError(f"{path}: pixel_value {value} is used by two entries")
        relative = bool(entry["relative_saturation"])
        threshold = float(entry["saturation_threshold"])
        if threshold <= 0 or (relative and threshold > 1):
            raise DataError(
                f"{path} entry {i} ({entry['defect_name']}): saturation_threshold {threshold} must be "
                f"{'in (0, 1] when relative' if relative else '> 0 pixels'}"
            )
        table[value] = DefectSpec(value, threshold, relative, str(entry["defect_name"]))
    return table


class MVTecLOCO(AnomalyDataModule):
    """MVTec LOCO AD (5 categories on the official release; discovered from disk)."""

    dataset_name = "MVTecLOCO"
    default_validation = "validation"

    def discover_categories(self) -> list[str]:
        if not self.root.is_dir():
            raise DataError(f"MVTecLOCO root {self.root} does not exist; expected <root>/<category>/{CONFIG_NAME}, train/good, test/")
        found = [p for p in list_subdirs(self.root, "MVTecLOCO root")]
        categories = [p.name for p in found if (p / "train").is_dir() and (p / "test").is_dir()]
        if not categories:
            raise DataError(
                f"MVTecLOCO root {self.root} has no category folders (expected <root>/<category>/"
                f"{CONFIG_NAME}, train/good, validation/good, test/{{{','.join(TEST_FOLDERS)}}}, "
                f"ground_truth/); sub-folders found: {[p.name for p in found] or 'none'}"
            )
        return categories

    def defect_table(self) -> DefectTable:
        return {c: read_defects_config(self.root / c / CONFIG_NAME) for c in self.categories}

    def index_category(self, category: str) -> list[Sample]:
        cat_dir = require_dir(self.root / category, f"MVTecLOCO category folder {category!r}")
        read_defects_config(cat_dir / CONFIG_NAME)  # fail at setup, not in a worker
        samples: list[Sample] = []
        train = list_images(cat_dir / "train" / "good", f"MVTecLOCO training images of {category!r}")
        if not train:
            raise DataError(f"MVTecLOCO category {category!r} has no training images in {cat_dir / 'train' / 'good'}")
        samples += [Sample(str(p), LABEL_NORMAL, category, "good", split="train") for p in train]
        val_dir = cat_dir / "validation" / "good"
        if val_dir.is_dir():
            samples += [Sample(str(p), LABEL_NORMAL, category, "good", split="validation")
                        for p in list_images(val_dir, f"MVTecLOCO validation images of {category!r}")]
        test_dir = require_dir(cat_dir / "test", f"MVTecLOCO test folder of {category!r}")
        for sub in list_subdirs(test_dir, "MVTecLOCO test folder"):
            if sub.name not in TEST_FOLDERS:
                raise DataError(f"unexpected MVTecLOCO test folder {sub}; expected one of {TEST_FOLDERS}")
        used: set[Path] = set()
        for folder in TEST_FOLDERS:
            if not (test_dir / folder).is_dir():
                continue
            for image in list_images(test_dir / folder, f"MVTecLOCO test images {category}/{folder}"):
                if folder == "good":
                    samples.append(Sample(str(image), LABEL_NORMAL, category, "good", split="test"))
                    continue
                region_dir = cat_dir / "ground_truth" / folder / image.stem
                masks = list_images(region_dir, f"the ground-truth folder of anomalous image {image}") \
                    if region_dir.is_dir() else []
                if not masks:
                    raise DataError(
                        f"missing masks for anomalous test image {image}: expected {region_dir}/000.png, ..."
                    )
                used.add(region_dir)
                samples.append(Sample(str(image), LABEL_ANOMALOUS, category, folder,
                                      tuple(str(m) for m in masks), split="test",
                                      subset=SUBSET_OF_FOLDER[folder]))
        if not any(s.split == "test" for s in samples):
            raise DataError(f"MVTecLOCO category {category!r} has no test images in {test_dir}")
        self._check_no_extra_masks(cat_dir / "ground_truth", used)
        return samples

    @staticmethod
    def _check_no_extra_masks(gt_dir: Path, used: set[Path]) -> None:
        if not gt_dir.is_dir():
            return
        for folder in list_subdirs(gt_dir, "MVTecLOCO ground_truth"):
            for entry in sorted(folder.iterdir()):
                if is_ignorable(entry):
                    continue
                if entry not in used:
                    raise DataError(
                        f"extra ground truth {entry} has no matching anomalous test image "
                        f"(expected test/{folder.name}/{entry.stem}.png)"
                    )
