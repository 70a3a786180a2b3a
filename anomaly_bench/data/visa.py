"""VisA: the raw release read in place through its split CSV, or the prepared MVTec-style tree.

Raw (``layout="raw"``), as extracted from ``VisA_20220922.tar``::

    <root>/split_csv/1cls.csv                       columns object,split,label,image,mask
    <root>/<category>/Data/Images/Normal/NNNN.JPG
    <root>/<category>/Data/Images/Anomaly/NNN.JPG
    <root>/<category>/Data/Masks/Anomaly/NNN.png    class ids 1..K (kept raw; metrics use != 0)

Prepared (``layout="prepared"``; the official ``prepare_data.py`` output or anomalib's
``visa_pytorch/``)::

    <root>/<category>/{train/good, test/good, test/bad}/*.JPG
    <root>/<category>/ground_truth/bad/<stem>.png   0/255 (sometimes saved with 3 channels)

``layout="auto"`` picks raw when ``<root>/split_csv/<split_csv>`` exists, else prepared.
Reading the raw tree needs no copying and keeps the per-defect class ids available.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal, Any

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.io import DataError
from anomaly_bench.data.mvtec_style import discover_mvtec_style_categories, index_mvtec_style, mask_same_stem
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, Sample

CSV_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LAYOUTS = ("auto", "raw", "prepared")
RAW_DEFECT_NAME = "bad"  # the raw CSV has no defect type; use the prepared layout's folder name


class VisA(AnomalyDataModule):
    """VisA (12 categories on the official release; discovered from the CSV or the folders).

    Args:
        root: the VisA folder (the raw release with ``split_csv/`` or the prepared layout).
        layout: which on-disk layout ``root`` holds: ``raw`` (the official release, read in place
            through the split CSV), ``prepared`` (``train/good``, ``test/good``, ``test/bad``,
            ``ground_truth/bad``) or ``auto`` (raw when the split CSV exists).
        split_csv: the split file under ``<root>/split_csv/`` for the raw layout (``1cls.csv`` is
            the one-class benchmark split).
        **kwargs: the options every datamodule has (``AnomalyDataModule``: image size, batch size...).
    """

    dataset_name = "VisA"
    default_validation = "none"

    def __init__(self, root: str | Path, *, layout: Literal["auto", "raw", "prepared"] = "auto",
                 split_csv: str = "1cls.csv",
                 **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if layout not in VISA_LAYOUTS:
            raise ValueError(f"VisA layout must be one of {VISA_LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.split_csv = split_csv
        self._rows: dict[str, list[Sample]] | None = None

    @property
    def csv_path(self) -> Path:
        return self.root / "split_csv" / self.split_csv

    @property
    def resolved_layout(self) -> str:
        if self.layout != "auto":
            return self.layout
        return "raw" if self.csv_path.is_file() else "prepared"

    def discover_categories(self) -> list[str]:
        if not self.root.is_dir():
            raise DataError(
                f"VisA root {self.root} does not exist; expected the raw release (split_csv/{self.split_csv}, "
                "<category>/Data/Images/...) or the prepared layout (<category>/train/good, test/, ground_truth/)"
            )
        if self.resolved_layout == "raw":
            return sorted(self._read_csv())
        try:
            return discover_mvtec_style_categories(self.root, self.dataset_name)
        except DataError as err:
            raise DataError(f"{err}; for the raw release expected {self.csv_path}") from err

    def index_category(self, category: str) -> list[Sample]:
        if self.resolved_layout == "raw":
            return list(self._read_csv()[category])
        return index_mvtec_style(self.root / category, category, mask_same_stem, self.dataset_name)

    # ------------------------------------------------------------------------------ raw CSV
    def _read_csv(self) -> dict[str, list[Sample]]:
        if self._rows is not None:
            return self._rows
        if not self.csv_path.is_file():
            raise DataError(f"VisA split file not found: {self.csv_path} (expected columns {','.join(CSV_COLUMNS)})")
        rows: dict[str, list[Sample]] = {}
        with open(self.csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{self.csv_path}: missing column(s) {missing}; expected {','.join(CSV_COLUMNS)}")
            for line_no, row in enumerate(reader, start=2):
                sample = self._row_to_sample(row, line_no)
                rows.setdefault(sample.category, []).append(sample)
        if not rows:
            raise DataError(f"{self.csv_path} has no data rows")
        for category, samples in rows.items():
            if not any(s.split == "train" for s in samples):
                raise DataError(f"{self.csv_path}: category {category!r} has no train rows")
            if not any(s.split == "test" for s in samples):
                raise DataError(f"{self.csv_path}: category {category!r} has no test rows")
        self._rows = rows
        return rows

    def _row_to_sample(self, row: dict[str, str], line_no: int) -> Sample:
        where = f"{self.csv_path} line {line_no}"
        category, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
        if split not in ("train", "test"):
            raise DataError(f"{where}: split must be 'train' or 'test', got {split!r}")
        if label not in ("normal", "anomaly"):
            raise DataError(f"{where}: label must be 'normal' or 'anomaly', got {label!r}")
        image = self.root / row["image"].strip()
        if not image.is_file():
            raise DataError(f"{where}: image file {image} does not exist")
        mask_field = (row.get("mask") or "").strip()
        if label == "normal":
            if mask_field:
                raise DataError(f"{where}: a normal row must have an empty mask field, got {mask_field!r}")
            return Sample(str(image), LABEL_NORMAL, category, "good", split=split)
        if split == "train":
            raise DataError(f"{where}: anomalous image {image} in the train split of a one-class CSV")
        if not mask_field:
            raise DataError(f"{where}: anomalous image {image} has no mask path (expected <category>/Data/Masks/Anomaly/<stem>.png)")
        mask = self.root / mask_field
        if not mask.is_file():
            raise DataError(f"{where}: mask file {mask} does not exist")
        return Sample(str(image), LABEL_ANOMALOUS, category, RAW_DEFECT_NAME, (str(mask),), split=split)

