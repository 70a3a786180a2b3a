"""``anomaly-bench evaluate``: score a folder of saved anomaly maps against a dataset's ground truth.

    anomaly-bench evaluate --maps DIR --dataset MVTecAD --root data/mvtec [--category bottle ...]
                           [--resolution native|INT] [--mode auto|exact|binned] [--fpr_limit 0.3]
                           [--spro_limits 0.05 0.3] [--exact_max_pixels N] [--output DIR] [--no_plots]

Maps are ``.npy`` / ``.tif`` / ``.tiff`` files holding one 2-D array of raw scores (larger = more
anomalous), any size (resized bilinearly to the evaluation resolution). A map is matched to a test
image by its last two path parts ``<defect>/<stem>`` (e.g. ``maps/bottle/test/broken_large/000.npy``
or ``maps/broken_large/000.tiff``); when several categories share that name, the map's path must
also contain the category name. The image score is the map's maximum (the official MVTec rule).
The test index comes from the dataset's own datamodule (``anomaly_bench.data``) and the numbers
from the same evaluation core as a training run's ``Evaluator`` (``metrics.accumulator``), so
results from other tools are scored on exactly the images and masks our runs use, and written as
the same ``metrics.csv`` / ``metrics.json`` (default: into the maps folder).

Options are spelled like the Lightning CLI's (``--fpr_limit``); the dashed spellings of release 0.1
(``--fpr-limit``, ``--spro-limits``, ``--exact-max-pixels``, ``--no-plots``) still work for one
release, with a note on stderr. Errors are one line on stderr and exit status 2
(``ANOMALY_BENCH_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from anomaly_bench.data.io import DataError
from anomaly_bench.metrics.accumulator import EvalItem, EvaluationAccumulator, EvaluationConfig
from anomaly_bench.metrics.report import format_table
from anomaly_bench.types import Sample

PROG = "anomaly-bench evaluate"
MAP_SUFFIXES = (".npy", ".tif", ".tiff")
# release 0.1's spellings -> today's (LightningCLI style); accepted for one more release
DEPRECATED_FLAGS = {"--fpr-limit": "--fpr_limit", "--spro-limits": "--spro_limits",
                    "--exact-max-pixels": "--exact_max_pixels", "--no-plots": "--no_plots"}


class EvaluateError(ValueError):
    """Bad input to ``anomaly-bench evaluate``: the message names the option, folder or file."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), like the command's other errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", required=True, type=Path, help="folder of .npy/.tif/.tiff anomaly maps")
    parser.add_argument("--dataset", required=True,
                        help="datamodule class in anomaly_bench.data: MVTecAD, VisA, GoodsAD, MVTecLOCO, MPDD, Folder")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--category", nargs="+", default=["all"], help="category name(s) or 'all'")
    parser.add_argument("--resolution", default="native", help="'native' (ground-truth size) or an int size")
    parser.add_argument("--mode", default="auto", choices=("auto", "exact", "binned"), help="pixel curves")
    parser.add_argument("--fpr_limit", type=float, default=0.3, help="AU-PRO integration limit")
    parser.add_argument("--spro_limits", type=float, nargs="+", default=[0.05, 0.3],
                        help="AU-sPRO integration limits (MVTec LOCO)")
    parser.add_argument("--exact_max_pixels", type=int, default=50_000_000,
                        help="mode auto: exact curves up to this many pixels per category, binned above")
    parser.add_argument("--output", type=Path, default=None, help="where to write metrics.csv/json (default: --maps)")
    parser.add_argument("--no_plots", action="store_true", help="do not write curve plots")
    return parser


def upgrade_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Today's spelling of every deprecated dashed flag in ``argv``, plus one note per flag used.

    Args:
        argv: the command's arguments.
    """
    out, notes = [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in DEPRECATED_FLAGS:
            new = DEPRECATED_FLAGS[name]
            note = f"{name} is deprecated, use {new} (the dashed spelling goes in the next release)"
            if note not in notes:
                notes.append(note)
            arg = f"{new}{eq}{value}"
        out.append(arg)
    return out, notes


def load_map(path: Path) -> torch.Tensor:
    """A 2-D float32 map from .npy / .tif / .tiff (singleton channel axes are dropped).

    Args:
        path: the map file.
    """
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            import tifffile

            array = tifffile.imread(path)
    except Exception as err:  # numpy and tifffile raise many types for damaged files
        raise EvaluateError(f"cannot read anomaly map {path}: {err}") from None
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise EvaluateError(f"anomaly map {path} must be a 2-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise EvaluateError(f"anomaly map {path} must be numeric, got dtype {array.dtype}")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise EvaluateError(f"anomaly map {path} contains NaN or inf values; raw scores must be finite")
    return torch.from_numpy(values)


class MapIndex:
    """Map files by their last two path parts (``<defect>/<stem>``).

    Args:
        folder: the folder searched (recursively) for maps.
    """

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise EvaluateError(f"--maps {folder} is not a folder")
        self.folder = folder
        self.by_name: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in MAP_SUFFIXES and path.is_file():
                parts = path.relative_to(folder).with_suffix("").parts
                key = (parts[-2] if len(parts) > 1 else "", parts[-1])
                self.by_name[key].append(path)
        if not self.by_name:
            raise EvaluateError(f"no {'/'.join(MAP_SUFFIXES)} anomaly maps found under --maps {folder}")

    def find(self, sample: Sample) -> Path:
        """The one map of a test image (EvaluateError naming the image when none or several).

        Args:
            sample: the test image.
        """
        image = Path(sample.image_path)
        key = (image.parent.name, image.stem)
        candidates = self.by_name.get(key, [])
        if len(candidates) > 1:
            candidates = [p for p in candidates if sample.category in p.relative_to(self.folder).parts[:-2]]
        if len(candidates) != 1:
            what = "no map" if not candidates else f"{len(candidates)} maps"
            raise EvaluateError(
                f"{what} for test image {image} under {self.folder}: expected one file "
                f"<...>/{sample.category}/<...>/{key[0]}/{key[1]}{{{','.join(MAP_SUFFIXES)}}}"
            )
        return candidates[0]


def _datamodule(args: argparse.Namespace):
    import anomaly_bench.data as data

    if args.dataset not in data.DATAMODULES:
        raise EvaluateError(f"--dataset {args.dataset!r} is not a datamodule of anomaly_bench.data; "
                            f"expected one of {', '.join(data.DATAMODULES)}")
    datamodule_cls = getattr(data, args.dataset)
    category = args.category[0] if len(args.category) == 1 else args.category
    try:
        return datamodule_cls(root=args.root, category=category, num_workers=0, cache="none")
    except (TypeError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise EvaluateError(f"--dataset {args.dataset} cannot be built from --root/--category: {err}") from None


def _config(args: argparse.Namespace) -> EvaluationConfig:
    if args.resolution == "model":
        raise EvaluateError("--resolution 'model' needs a model; use 'native' or an int size")
    try:
        return EvaluationConfig(args.resolution, args.mode, args.fpr_limit, tuple(args.spro_limits),
                                args.exact_max_pixels)
    except ValueError as err:
        raise EvaluateError(str(err)) from None


def evaluate(args: argparse.Namespace) -> list[dict]:
    """Score the maps (raises on bad input); writes the tables and returns their rows.

    Args:
        args: the parsed options of ``anomaly-bench evaluate``.
    """
    config = _config(args)
    maps = MapIndex(args.maps)
    datamodule = _datamodule(args)
    samples = [s for s in datamodule.samples("test") if s.label in (0, 1)]
    if not samples:
        raise EvaluateError(f"no labelled test images found for --dataset {args.dataset} at --root {args.root}")
    accumulator = EvaluationAccumulator(config, defect_tables=datamodule.defect_table())
    for sample in samples:
        anomaly_map = load_map(maps.find(sample))
        accumulator.update(anomaly_map.max().reshape(1), [anomaly_map], [EvalItem.from_sample(sample)],
                           source=f"the maps in {args.maps}")
    result = accumulator.finish()
    output = args.output or args.maps
    result.write(output, config, {"stage": "evaluate", "maps": str(args.maps), "dataset": args.dataset,
                                  "root": str(args.root), "image_score": "max of the anomaly map"},
                 plots=not args.no_plots)
    print(format_table(result.rows))
    print(f"wrote {Path(output) / 'metrics.csv'} and metrics.json")
    return result.rows


def evaluate_main(argv: list[str] | None = None) -> int:
    """Entry point of ``anomaly-bench evaluate``: 0 on success, 2 with a one-line error on bad input.

    Args:
        argv: the arguments after ``evaluate`` (default: ``sys.argv[1:]``).
    """
    argv, notes = upgrade_flags(list(sys.argv[1:] if argv is None else argv))
    for note in notes:
        print(f"{PROG}: deprecated: {note}", file=sys.stderr)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a one-line usage error (2): a status, not an exception
        return int(stop.code or 0)
    try:
        evaluate(args)
    except (EvaluateError, DataError) as err:
        if os.environ.get("ANOMALY_BENCH_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0
