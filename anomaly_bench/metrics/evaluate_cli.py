"""``anomaly-bench evaluate``: score a folder of saved anomaly maps against a dataset's ground truth.

    anomaly-bench evaluate --maps DIR --dataset MVTecAD --root data/mvtec [--category bottle ...]
                           [--resolution native|INT] [--mode auto|exact|binned] [--fpr-limit 0.3]
                           [--output DIR] [--no-plots]

Maps are ``.npy`` / ``.tif`` / ``.tiff`` files holding one 2-D array of raw scores (larger = more
anomalous), any size (resized bilinearly to the evaluation resolution). A map is matched to a test
image by its last two path parts ``<defect>/<stem>`` (e.g. ``maps/bottle/test/broken_large/000.npy``
or ``maps/broken_large/000.tiff``); when several categories share that name, the map's path must
also contain the category name. The image score is the map's maximum (the official MVTec rule).
The test index comes from the dataset's own datamodule (``anomaly_bench.data``), so results from
other tools are scored on exactly the images and masks our runs use, and written as the same
``metrics.csv`` / ``metrics.json`` (default: into the maps folder).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from anomaly_bench.metrics.ground_truth import GroundTruth, GroundTruthCache
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.report import (
    LOCO_FOLDERS,
    ReportConfig,
    category_result,
    format_table,
    image_tag,
    stable_id,
    with_mean_row,
    write_tables,
)
from anomaly_bench.types import LABEL_NORMAL, DefectSpec, Sample

MAP_SUFFIXES = (".npy", ".tif", ".tiff")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaly-bench evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", required=True, type=Path, help="folder of .npy/.tif/.tiff anomaly maps")
    parser.add_argument("--dataset", required=True,
                        help="datamodule class in anomaly_bench.data: MVTecAD, VisA, GoodsAD, MVTecLOCO, MPDD")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--category", nargs="+", default=["all"], help="category name(s) or 'all'")
    parser.add_argument("--resolution", default="native", help="'native' (ground-truth size) or an int size")
    parser.add_argument("--mode", default="auto", choices=("auto", "exact", "binned"))
    parser.add_argument("--fpr-limit", type=float, default=0.3)
    parser.add_argument("--spro-limits", type=float, nargs="+", default=[0.05, 0.3])
    parser.add_argument("--exact-max-pixels", type=int, default=50_000_000)
    parser.add_argument("--output", type=Path, default=None, help="where to write metrics.csv/json (default: --maps)")
    parser.add_argument("--no-plots", action="store_true", help="do not write curve plots")
    return parser


def load_map(path: Path) -> torch.Tensor:
    """A 2-D float32 map from .npy / .tif / .tiff (singleton channel axes are dropped)."""
    if path.suffix == ".npy":
        array = np.load(path)
    else:
        import tifffile

        array = tifffile.imread(path)
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise ValueError(f"anomaly map {path} must be a 2-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"anomaly map {path} must be numeric, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.float32))


class MapIndex:
    """Map files by their last two path parts (``<defect>/<stem>``)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ValueError(f"--maps {folder} is not a folder")
        self.folder = folder
        self.by_name: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in MAP_SUFFIXES and path.is_file():
                parts = path.relative_to(folder).with_suffix("").parts
                key = (parts[-2] if len(parts) > 1 else "", parts[-1])
                self.by_name[key].append(path)
        if not self.by_name:
            raise ValueError(f"no {'/'.join(MAP_SUFFIXES)} anomaly maps found under {folder}")

    def find(self, sample: Sample) -> Path:
        image = Path(sample.image_path)
        key = (image.parent.name, image.stem)
        candidates = self.by_name.get(key, [])
        if len(candidates) > 1:
            candidates = [p for p in candidates if sample.category in p.relative_to(self.folder).parts[:-2]]
        if len(candidates) != 1:
            what = "no map" if not candidates else f"{len(candidates)} maps"
            raise ValueError(
                f"{what} for test image {image} under {self.folder}: expected one file "
                f"<...>/{sample.category}/<...>/{key[0]}/{key[1]}{{{','.join(MAP_SUFFIXES)}}}"
            )
        return candidates[0]


def _defect_specs(sample: Sample, table) -> tuple[DefectSpec, ...]:
    """LOCO: each mask file's single non-zero value keys into defects_config.json."""
    if sample.defects or table is None:
        return tuple(sample.defects)
    from anomaly_bench.data.io import read_mask

    specs = []
    category_table = table.get(sample.category, {})
    for path in sample.mask_paths:
        values = np.unique(read_mask(path))
        values = values[values != 0]
        if len(values) != 1 or int(values[0]) not in category_table:
            raise ValueError(f"mask {path}: expected one non-zero pixel value from defects_config.json, got {values.tolist()}")
        specs.append(category_table[int(values[0])])
    return tuple(specs)


def evaluate_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import anomaly_bench.data as data

    datamodule_cls = getattr(data, args.dataset, None)
    if datamodule_cls is None or not isinstance(datamodule_cls, type):
        raise SystemExit(f"--dataset {args.dataset!r} is not a datamodule in anomaly_bench.data "
                         "(MVTecAD, VisA, GoodsAD, MVTecLOCO, MPDD)")
    category = args.category[0] if len(args.category) == 1 else args.category
    datamodule = datamodule_cls(root=args.root, category=category, num_workers=0, cache="none")
    samples = [s for s in datamodule.samples("test") if s.label in (0, 1)]
    if not samples:
        raise SystemExit(f"no labelled test images found for {args.dataset} at {args.root}")
    table = datamodule.defect_table() if hasattr(datamodule, "defect_table") else None
    size = None if args.resolution == "native" else (int(args.resolution), int(args.resolution))

    maps = MapIndex(args.maps)
    truths = GroundTruthCache()
    images = ImageRankingMetric()
    pixels = PixelRankingMetric(mode=args.mode, fpr_limit=args.fpr_limit, exact_max_pixels=args.exact_max_pixels)
    names: dict[int, str] = {}
    for sample in samples:
        anomaly_map = load_map(maps.find(sample))
        group = stable_id(sample.category)
        names[group] = sample.category
        tag = image_tag(sample.label, sample.defect)
        key = stable_id(sample.image_path)
        if sample.label == LABEL_NORMAL:
            from anomaly_bench.data.io import image_size_on_disk

            truth: GroundTruth | None = GroundTruth.normal(*(size or image_size_on_disk(sample.image_path)))
        elif sample.mask_paths:
            loco = sample.defect in LOCO_FOLDERS
            truth = truths.from_files(sample.mask_paths, _defect_specs(sample, table) if loco else (), size, loco)
        else:
            truth = None
        images.update(anomaly_map.max().reshape(1), torch.tensor([sample.label]), [tag], [group], [key], [truth is not None])
        if truth is not None:
            pixels.update([anomaly_map], ground_truths=[truth], tags=[tag], groups=[group], keys=[key])

    config = ReportConfig(args.fpr_limit, tuple(args.spro_limits), True, args.resolution, args.mode,
                          {"exact_max_pixels": args.exact_max_pixels})
    results = [category_result(name, group, images, pixels, config) for group, name in sorted(names.items(), key=lambda i: i[1])]
    rows = with_mean_row([r.row for r in results])
    output = args.output or args.maps
    modes = {r.row["category"]: r.pixel_curves["all"].mode for r in results if "all" in r.pixel_curves}
    write_tables(rows, output, config, {"modes_used": modes, "stage": "evaluate", "maps": str(args.maps),
                                        "dataset": args.dataset, "root": str(args.root),
                                        "image_score": "max of the anomaly map"})
    if not args.no_plots:
        from anomaly_bench.metrics.plots import plot_category, safe_name

        for result in results:
            name = result.row["category"]
            plot_category(Path(output) / "curves" / f"{safe_name(name)}.png", name, result.image_curves,
                          result.pixel_curves, args.fpr_limit, args.spro_limits[0])
    print(format_table(rows))
    print(f"wrote {Path(output) / 'metrics.csv'} and metrics.json")
    return 0
