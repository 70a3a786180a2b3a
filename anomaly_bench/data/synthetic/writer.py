"""Write a synthetic dataset in the exact on-disk layout of a public dataset.

Naming reproduced per layout (see docs in ``anomaly_bench.data.<layout>`` modules):

- ``mvtec`` / ``mpdd``: ``<cat>/train/good/000.png``, ``<cat>/test/<defect>/000.png``,
  ``<cat>/ground_truth/<defect>/000_mask.png`` (0/255, 1 channel).
- ``goodsad``: 6-digit names (3-digit goods id + 3-digit serial), ``.jpg`` images,
  ``ground_truth/<defect>/<stem>.png`` (0/255).
- ``visa-raw``: ``split_csv/1cls.csv`` (object,split,label,image,mask), ``<cat>/Data/Images/Normal/NNNN.JPG``,
  ``<cat>/Data/Images/Anomaly/NNN.JPG``, ``<cat>/Data/Masks/Anomaly/NNN.png`` holding class ids 1..K,
  ``<cat>/image_anno.csv`` (image,label,mask).
- ``visa``: the prepared tree ``<cat>/{train/good,test/good,test/bad}/*.JPG``,
  ``<cat>/ground_truth/bad/<stem>.png`` (0/255 saved with 3 channels, as anomalib's preparation does).
- ``loco``: ``<cat>/defects_config.json``, ``{train,validation,test}/...``,
  ``ground_truth/{logical,structural}_anomalies/NNN/000.png ...`` one file per region holding its
  ``pixel_value``; images are non-square (W = 1.25 H).
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.data.synthetic import heldout
from anomaly_bench.data.synthetic.generator import CategoryGenerator, SynthImage
from anomaly_bench.data.synthetic.scenes import scene_for

LAYOUTS = ("mvtec", "mpdd", "visa", "visa-raw", "goodsad", "loco")
# "standard": the scenes of scenes.py / defects.py (tests, demos, tuning); "heldout": the scenes of
# heldout.py, written only to judge methods on data their settings were not chosen on
FAMILIES = ("standard", "heldout")
# written at the root of every synthetic dataset: reports and grids read it to know the data is a
# stand-in (no comparison with the papers' numbers)
SYNTHETIC_MARKER = "anomaly_bench_synthetic.json"
# which synthetic layout a datamodule class reads (VisA reads both "visa" and "visa-raw")
LAYOUT_OF_DATAMODULE: dict[str, str] = {
    "MVTecAD": "mvtec", "MPDD": "mpdd", "VisA": "visa", "GoodsAD": "goodsad", "MVTecLOCO": "loco",
}

DEFAULT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec": ("grid", "ring"),
    "mpdd": ("board", "wood"),
    "visa": ("board", "ring"),
    "visa-raw": ("board", "ring"),
    "goodsad": ("weave", "ring"),
    "loco": ("pins", "cables"),
}
# the scene kind used for a category name that is not itself a kind name
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "loco": ("pins", "cables"),
}
DEFECTS_OF_KIND: dict[str, tuple[str, ...]] = {
    "weave": ("scratch", "stain", "contamination"),
    "grid": ("crack", "hole", "contamination"),
    "wood": ("scratch", "hole", "stain"),
    "ring": ("scratch", "crack", "contamination"),
    "board": ("missing_part", "misplaced_part", "contamination"),
    "pins": ("missing_pin", "extra_pin", "scratch", "contamination"),
    "cables": ("wrong_cable_color", "mismatched_connector", "cut_cable", "contamination"),
}
LOGICAL_DEFECTS = {"missing_pin", "extra_pin", "wrong_cable_color", "mismatched_connector"}

DEFAULT_SIZE = 128
DEFAULT_TRAIN = 20
DEFAULT_TEST_GOOD = 6
DEFAULT_PER_DEFECT = 3
DEFAULT_VALIDATION = 4  # MVTec LOCO only (its validation/ split)
JPEG_QUALITY = 92


@dataclass
class SynthSummary:
    """What was written: counts per category and split/defect folder."""

    layout: str
    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return list(self.counts)

    def describe(self) -> str:
        lines = [f"wrote synthetic {self.layout} dataset to {self.root}"]
        for cat, counts in self.counts.items():
            lines.append(f"  {cat}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return "\n".join(lines)


def write_dataset(
    layout: str,
    root: str | Path,
    categories: Sequence[str] | None = None,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    train: int = DEFAULT_TRAIN,
    test_good: int = DEFAULT_TEST_GOOD,
    per_defect: int = DEFAULT_PER_DEFECT,
    validation: int = DEFAULT_VALIDATION,
    family: str = "standard",
) -> SynthSummary:
    """Write a seeded synthetic dataset in ``layout`` under ``root`` and return the counts.

    Same arguments -> byte-identical files.

    Args:
        layout: the on-disk layout of a public dataset, one of ``LAYOUTS``.
        root: output folder (created if missing).
        categories: category names (default: the layout's two for ``standard``, the four held-out
            scenes for ``heldout``); a scene name of the family or any name (a stable pick).
        size: image height in pixels (and width, except LOCO where W = 1.25 H).
        seed: seed of every random draw (scene constants, layouts, defects, noise).
        train: training images per category.
        test_good: normal test images per category.
        per_defect: anomalous test images per defect type of a category.
        validation: number of ``validation/good`` images per category (LOCO only).
        family: which scenes are drawn: ``standard`` (tests, demos, choosing settings) or
            ``heldout`` (fabric, granite, washer, pcb: only for judging, see ``heldout.py``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if train < 1 or test_good < 0 or per_defect < 0 or validation < 0:
        raise ValueError("train must be >= 1 and test_good, per_defect, validation >= 0")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if categories:
        categories = list(categories)
    else:
        categories = list(heldout.CATEGORIES if family == "heldout" else DEFAULT_CATEGORIES[layout])
    hw = (size, int(round(size * 1.25))) if layout == "loco" else (size, size)
    summary = SynthSummary(layout, root)
    generated: dict[str, tuple[list[SynthImage], list[str]]] = {}
    for category in categories:
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), 7])
        if family == "heldout":
            kind = heldout.heldout_scene(category, seed)
            defects = list(heldout.DEFECTS_OF_KIND[kind.name])
            gen: CategoryGenerator = heldout.HeldoutGenerator(kind, hw, defects, rng)
        else:
            kind = scene_for(category, seed, DEFAULT_KINDS.get(layout, tuple(DEFECTS_OF_KIND)))
            defects = list(DEFECTS_OF_KIND[kind.name])
            gen = CategoryGenerator(kind, hw, defects, rng)
        images = gen.normals("train", train)
        if layout == "loco":
            images += gen.normals("validation", validation)
        images += gen.normals("test", test_good) + gen.anomalies(per_defect)
        generated[category] = (images, defects)
    writer = {
        "mvtec": _write_mvtec_style, "mpdd": _write_mvtec_style, "goodsad": _write_goodsad,
        "visa": _write_visa_prepared, "visa-raw": _write_visa_raw, "loco": _write_loco,
    }[layout]
    writer(root, generated, summary)
    marker = {"layout": layout, "family": family, "seed": seed, "size": size, "counts": summary.counts}
    atomic_write_json(root / SYNTHETIC_MARKER, marker)  # written last: the dataset is complete
    return summary


# ------------------------------------------------------------------------------ helpers
def _imwrite(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"could not write {path}")


def _binary(mask: np.ndarray, channels: int = 1) -> np.ndarray:
    out = np.where(mask, 255, 0).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if channels == 3 else out


def _count(summary: SynthSummary, category: str, key: str) -> None:
    summary.counts.setdefault(category, {})
    summary.counts[category][key] = summary.counts[category].get(key, 0) + 1


def _folder_of(img: SynthImage) -> str:
    return f"{img.split}/{img.defect}"


# ------------------------------------------------------------------------------ layouts
def _write_mvtec_style(root: Path, generated, summary: SynthSummary) -> None:
    for category, (images, _defects) in generated.items():
        counters: dict[str, int] = {}
        for img in images:
            folder = _folder_of(img)
            n = counters[folder] = counters.get(folder, -1) + 1
            stem = f"{n:03d}"
            _imwrite(root / category / folder / f"{stem}.png", img.image)
            if img.channels:
                _imwrite(root / category / "ground_truth" / img.defect / f"{stem}_mask.png", _binary(img.mask))
            _count(summary, category, folder)


def _write_goodsad(root: Path, generated, summary: SynthSummary) -> None:
    for category, (images, _defects) in generated.items():
        serials: dict[tuple[str, int], int] = {}
        rng = np.random.default_rng(zlib.crc32(category.encode()))
        for img in images:
            folder = _folder_of(img)
            goods_id = int(rng.integers(1, 6))  # several products per category, as in GoodsAD
            n = serials[(folder, goods_id)] = serials.get((folder, goods_id), 0) + 1
            stem = f"{goods_id:03d}{n:03d}"
            _imwrite(root / category / folder / f"{stem}.jpg", img.image)
            if img.channels:
                _imwrite(root / category / "ground_truth" / img.defect / f"{stem}.png", _binary(img.mask))
            _count(summary, category, folder)


def _write_visa_prepared(root: Path, generated, summary: SynthSummary) -> None:
    for category, (images, _defects) in generated.items():
        normal_index, anomaly_index = 0, 0
        for img in images:
            if img.channels:
                stem, anomaly_index = f"{anomaly_index:03d}", anomaly_index + 1
                folder = "test/bad"
                _imwrite(root / category / "ground_truth" / "bad" / f"{stem}.png", _binary(img.mask, 3))
            else:
                stem, normal_index = f"{normal_index:04d}", normal_index + 1
                folder = f"{img.split}/good"
            _imwrite(root / category / folder / f"{stem}.JPG", _rgb(img.image))
            _count(summary, category, folder)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _write_visa_raw(root: Path, generated, summary: SynthSummary) -> None:
    rows: list[dict[str, str]] = []
    for category, (images, defects) in generated.items():
        class_id = {d: i + 1 for i, d in enumerate(defects)}
        anno: list[dict[str, str]] = []
        # the Normal folder holds train and test normals under one numbering (the CSV splits them)
        normals = [img for img in images if not img.channels]
        order = np.random.default_rng(zlib.crc32(category.encode())).permutation(len(normals))
        normal_names = {id(normals[j]): f"{k:04d}" for k, j in enumerate(order)}
        anomaly_index = 0
        for img in images:
            if img.channels:
                stem, anomaly_index = f"{anomaly_index:03d}", anomaly_index + 1
                image_rel = f"{category}/Data/Images/Anomaly/{stem}.JPG"
                mask_rel = f"{category}/Data/Masks/Anomaly/{stem}.png"
                ids = np.zeros(img.image.shape[:2], np.uint8)
                for name, m in img.channels:
                    ids[m] = class_id[name]
                _imwrite(root / mask_rel, ids)
                rows.append({"object": category, "split": "test", "label": "anomaly", "image": image_rel, "mask": mask_rel})
                anno.append({"image": image_rel, "label": img.defect, "mask": mask_rel})
                _count(summary, category, "test/anomaly")
            else:
                image_rel = f"{category}/Data/Images/Normal/{normal_names[id(img)]}.JPG"
                rows.append({"object": category, "split": img.split, "label": "normal", "image": image_rel, "mask": ""})
                anno.append({"image": image_rel, "label": "normal", "mask": ""})
                _count(summary, category, f"{img.split}/normal")
            _imwrite(root / image_rel, _rgb(img.image))
        with open(root / category / "image_anno.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "label", "mask"])
            writer.writeheader()
            writer.writerows(sorted(anno, key=lambda r: r["image"]))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)


def _write_loco(root: Path, generated, summary: SynthSummary) -> None:
    for category, (images, defects) in generated.items():
        config = []
        pixel_value = {}
        for i, defect in enumerate(defects):
            pixel_value[defect] = 255 - i
            areas = [int(m.sum()) for img in images for name, m in img.channels if name == defect]
            if defect in LOGICAL_DEFECTS:  # count-like defects: absolute saturation = typical area
                threshold: float = max(1, int(np.median(areas))) if areas else 1
                relative = False
            else:
                threshold, relative = 1.0, True
            config.append({"defect_name": defect, "pixel_value": 255 - i,
                           "saturation_threshold": threshold, "relative_saturation": relative})
        (root / category).mkdir(parents=True, exist_ok=True)
        (root / category / "defects_config.json").write_text(json.dumps(config, indent=4))
        counters: dict[str, int] = {}
        for img in images:
            if img.channels:
                group = "logical_anomalies" if img.defect in LOGICAL_DEFECTS else "structural_anomalies"
                folder = f"test/{group}"
            else:
                group, folder = "", f"{img.split}/good"
            n = counters[folder] = counters.get(folder, -1) + 1
            stem = f"{n:03d}"
            _imwrite(root / category / folder / f"{stem}.png", img.image)
            for k, (name, m) in enumerate(img.channels):
                channel = np.where(m, pixel_value[name], 0).astype(np.uint8)
                _imwrite(root / category / "ground_truth" / group / stem / f"{k:03d}.png", channel)
            _count(summary, category, folder)
