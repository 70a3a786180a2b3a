"""``anomaly-bench synth``: write a synthetic dataset from the command line."""

from __future__ import annotations

import argparse
from typing import Sequence

from anomaly_bench.data.synthetic.writer import (
    DEFAULT_PER_DEFECT, DEFAULT_SIZE, DEFAULT_TEST_GOOD, DEFAULT_TRAIN, DEFAULT_VALIDATION, FAMILIES, LAYOUTS,
    write_dataset,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-bench synth",
        description="Write a seeded synthetic anomaly-detection dataset in the layout of a public dataset.",
    )
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument("--root", required=True, help="output folder (created if missing)")
    parser.add_argument("--family", choices=FAMILIES, default="standard",
                        help="scene family: standard (tests, demos, tuning) or heldout (fabric, granite, washer, "
                             "pcb: only for judging methods on scenes their settings were not chosen on)")
    parser.add_argument("--categories", nargs="+", default=None,
                        help="category names (a scene kind: weave grid wood ring board pins cables for the "
                             "standard family, fabric granite washer pcb for heldout, or any name)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image height in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training images per category")
    parser.add_argument("--test-good", type=int, default=DEFAULT_TEST_GOOD, help="normal test images per category")
    parser.add_argument("--per-defect", type=int, default=DEFAULT_PER_DEFECT, help="test images per defect type")
    parser.add_argument("--validation", type=int, default=DEFAULT_VALIDATION,
                        help="validation/good images per category (loco only)")
    return parser


def synth_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomaly-bench synth ARGS``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        summary = write_dataset(
            args.layout, args.root, categories=args.categories, size=args.size, seed=args.seed,
            train=args.train, test_good=args.test_good, per_defect=args.per_defect, validation=args.validation,
            family=args.family,
        )
    except ValueError as err:  # a value the generator refuses (size, counts, a category): usage error, exit 2
        parser.error(str(err))
    print(summary.describe())
    return 0
