"""``AnomalyDataModule``: what every dataset layout shares (categories, splits, caching, loaders).

A layout subclass only says where things are on disk:
``discover_categories()`` (from disk, never a hard-coded list) and ``index_category(name)``
(-> ``Sample`` entries with ``split`` in train / validation / test). Everything else is here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anomaly_bench.data.cache import CACHE_MODES, SampleCache
from anomaly_bench.data.dataset import AnomalyDataset, DefectTable
from anomaly_bench.data.files import list_images_recursive
from anomaly_bench.data.sampling import EpochShuffleSampler
from anomaly_bench.data.io import DataError
from anomaly_bench.data.transforms import NORMALIZATIONS, build_augmentations
from anomaly_bench.types import LABEL_UNKNOWN, Sample, as_height_width, collate_items

log = logging.getLogger(__name__)

VALIDATION_MODES = ("none", "train_holdout", "validation")
MIN_HOLDOUT = 10  # held-out normals per category a threshold quantile can rest on


class AnomalyDataModule(LightningDataModule):
    """Base datamodule for one-class anomaly-detection datasets.

    Args:
        root: dataset root folder (layout described by the subclass).
        category: one category name, a list of names, or ``"all"``; several categories are
            served together (one unified model), each sample carrying its category.
        image_size: model input size, int (square) or (height, width).
        batch_size: training batch size.
        eval_batch_size: batch size for validation / test / predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        normalization: ``imagenet`` | ``none`` | ``minus_one_one``; None asks the model attached
            to the trainer (``input_normalization``) at setup, ImageNet without a trainer.
        train_augmentations: albumentations specs (see ``anomaly_bench.data.transforms``), applied
            to training images and masks only. None = no augmentation (``deterministic_train``).
        validation: ``none`` | ``train_holdout`` (seeded ``val_fraction`` of the training normals
            per category, at least ``MIN_HOLDOUT`` images where the category has twice that) |
            ``validation`` (the dataset's own validation split, e.g. MVTec LOCO). None = the
            dataset's own split where it has one, else ``train_holdout`` when a callback needs
            normal validation images (operating thresholds, ``Thresholding``), else ``none``.
            The resolved choice is ``resolved_validation``. The test split is never used.
        val_fraction: share of training normals held out for ``train_holdout``.
        cache: ``memory`` | ``disk`` | ``none`` (see ``anomaly_bench.data.cache``).
        cache_dir: folder for ``cache="disk"``.
        predict_path: an image file or a folder of images (searched recursively) to ``predict``
            without labels (label -1); None predicts on the test split.
        seed: seeds the train-holdout split.
        download: fetch and unpack the dataset's public archive into ``root`` when ``root`` holds no
            data yet (``prepare_data``; checksum verified first, see ``anomaly_bench.data.download``);
            a dataset already on disk is never touched. Datasets without a direct public archive
            (MPDD, GoodsAD) fail with the page to download them from.
    """

    dataset_name: ClassVar[str] = "dataset"
    default_validation: ClassVar[str] = "none"

    def __init__(
        self,
        root: str | Path,
        category: str | Sequence[str] = "all",
        image_size: int | Sequence[int] = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        normalization: str | None = None,
        train_augmentations: list[Any] | None = None,
        validation: str | None = None,
        val_fraction: float = 0.1,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        predict_path: str | Path | None = None,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.category = category
        self.image_size = as_height_width(image_size, "data.init_args.image_size")
        self.batch_size = _at_least(batch_size, 1, "batch_size")
        self.eval_batch_size = _at_least(eval_batch_size if eval_batch_size is not None else batch_size, 1,
                                         "eval_batch_size")
        self.num_workers = _at_least(num_workers, 0, "num_workers")
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be None or one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.train_augmentations = train_augmentations
        self._augment = build_augmentations(train_augmentations)  # fail at construction on bad specs
        if validation is not None and validation not in VALIDATION_MODES:
            raise ValueError(f"data.init_args.validation must be one of {VALIDATION_MODES}, got {validation!r}")
        self.validation = validation
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir")
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.predict_path = Path(predict_path) if predict_path is not None else None
        self.seed = int(seed)
        self.download = bool(download)

        self._categories: list[str] | None = None
        self._samples: dict[str, list[Sample]] | None = None
        self._datasets: dict[str, AnomalyDataset] = {}
        self._resolved_normalization: str | None = None

    # ------------------------------------------------------------- what a layout implements
    def discover_categories(self) -> list[str]:  # pragma: no cover - abstract
        """Category names found on disk (DataError naming the root if none)."""
        raise NotImplementedError

    def index_category(self, category: str) -> list[Sample]:  # pragma: no cover - abstract
        """Samples of one category with ``split`` set to train / validation / test."""
        raise NotImplementedError

    def defect_table(self) -> DefectTable | None:
        """Per-category mask-value meanings (MVTec LOCO); None for the other layouts."""
        return None

    # --------------------------------------------------------------------------- properties
    @property
    def categories(self) -> list[str]:
        """Resolved category names (after ``setup``; resolved on first access otherwise)."""
        if self._categories is None:
            self._categories = self._resolve_categories()
        return list(self._categories)

    @property
    def deterministic_train(self) -> bool:
        """True when training items are the same every epoch (no augmentation), so a model may
        cache frozen-backbone features per ``batch.path``."""
        return self._augment is None

    @property
    def resolved_validation(self) -> str:
        """The validation mode in use (``validation=None`` resolved, see the class docstring)."""
        if self.validation is not None:
            return self.validation
        if self.default_validation != "none":
            return self.default_validation
        trainer = getattr(self, "trainer", None)
        callbacks = getattr(trainer, "callbacks", None) or []
        if any(getattr(cb, "wants_validation_normals", False) for cb in callbacks):
            return "train_holdout"
        return "none"

    @property
    def resolved_normalization(self) -> str:
        return self._resolved_normalization or self._resolve_normalization()

    def samples(self, split: str) -> list[Sample]:
        """Index entries of ``train`` | ``val`` | ``test`` | ``predict`` (as served)."""
        return list(self._split_samples()[split])

    # ------------------------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        """Download the dataset when ``download`` is true (Lightning calls this on one process per
        node, before ``setup``); a no-op when ``root`` already holds data."""
        if self.download:
            from anomaly_bench.data.download import download_dataset

            download_dataset(self.dataset_name, self.root)

    def setup(self, stage: str | None = None) -> None:
        self._resolved_normalization = self._resolve_normalization()
        if stage == "predict" and self.predict_path is not None and not self.root.exists():
            self._categories = self._categories or _category_list(self.category, fallback="unknown")
        splits = self._split_samples()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            if split not in self._datasets and split in splits:
                self._datasets[split] = self._make_dataset(split, splits[split])

    def _resolve_normalization(self) -> str:
        if self.normalization is not None:
            return self.normalization
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        chosen = getattr(module, "input_normalization", None)
        if chosen is None:
            return "imagenet"
        if chosen not in NORMALIZATIONS:
            raise ValueError(f"model asks for normalization {chosen!r}; expected one of {NORMALIZATIONS}")
        return chosen

    def _resolve_categories(self) -> list[str]:
        available = self.discover_categories()
        if self.category == "all" or self.category == ["all"]:
            return list(available)
        wanted = _category_list(self.category)
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DataError(
                f"{self.dataset_name}: category {unknown} not found under {self.root}; "
                f"available: {available}"
            )
        return wanted

    def _split_samples(self) -> dict[str, list[Sample]]:
        if self._samples is not None:
            return self._samples
        samples: dict[str, list[Sample]] = {"train": [], "val": [], "test": [], "predict": []}
        needs_root = not (self.predict_path is not None and not self.root.exists())
        if needs_root:
            for category in self.categories:
                indexed = self.index_category(category)
                by_split: dict[str, list[Sample]] = {}
                for s in indexed:
                    by_split.setdefault(s.split, []).append(s)
                train = by_split.get("train", [])
                if self.resolved_validation == "train_holdout":
                    train, held_out = self._hold_out(train, category)
                    samples["val"] += held_out
                elif self.resolved_validation == "validation":
                    own = by_split.get("validation", [])
                    if not own:
                        raise DataError(
                            f"validation='validation' but {self.dataset_name} category {category!r} has no "
                            f"validation split under {self.root} (use 'train_holdout' or 'none')"
                        )
                    samples["val"] += own
                samples["train"] += train
                samples["test"] += by_split.get("test", [])
            samples["predict"] = list(samples["test"])
        if self.predict_path is not None:
            only = self.categories[0] if len(self.categories) == 1 else "unknown"
            samples["predict"] = [
                Sample(str(p), LABEL_UNKNOWN, only, "unknown", split="predict")
                for p in list_images_recursive(self.predict_path)
            ]
        self._samples = samples
        self._log_counts(samples)
        return samples

    def _hold_out(self, train: list[Sample], category: str) -> tuple[list[Sample], list[Sample]]:
        """Seeded, per-category split of the training normals (at least one on each side)."""
        if len(train) < 2:
            raise DataError(
                f"validation='train_holdout' needs at least 2 training images in category {category!r}, "
                f"found {len(train)}"
            )
        wanted = max(MIN_HOLDOUT, int(round(self.val_fraction * len(train))))
        n_val = min(wanted, max(1, len(train) // 2))  # never more than half of a small category
        # seed mixes in the category name so categories are split independently but reproducibly
        rng = np.random.default_rng([self.seed, *category.encode()])
        chosen = set(rng.choice(len(train), size=n_val, replace=False).tolist())
        kept = [s for i, s in enumerate(train) if i not in chosen]
        held = [dataclasses.replace(s, split="val") for i, s in enumerate(train) if i in chosen]
        return kept, held

    def _log_counts(self, samples: dict[str, list[Sample]]) -> None:
        for split in ("train", "val", "test"):
            counts = Counter((s.category, s.label) for s in samples[split])
            if counts:
                log.info("%s %s: %s", self.dataset_name, split,
                         ", ".join(f"{c}/label={l}: {n}" for (c, l), n in sorted(counts.items())))

    def _make_dataset(self, split: str, samples: list[Sample]) -> AnomalyDataset:
        cache = None
        if self.cache != "none" and samples:
            cache = SampleCache(samples, self.image_size, self.cache,
                                self.cache_dir / self.dataset_name if self.cache_dir else None)
        return AnomalyDataset(
            samples,
            self.image_size,
            normalization=self._resolved_normalization or self._resolve_normalization(),
            augment=self._augment if split == "train" else None,
            cache=cache,
            defect_table=self.defect_table(),
        )

    def dataset(self, split: str) -> AnomalyDataset:
        """The dataset of ``train`` | ``val`` | ``test`` | ``predict`` (built on first use)."""
        if split not in self._datasets:
            if self._resolved_normalization is None:
                self._resolved_normalization = self._resolve_normalization()
            self._datasets[split] = self._make_dataset(split, self._split_samples()[split])
        return self._datasets[split]

    # ------------------------------------------------------------------------- dataloaders
    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        # the order follows seed_everything (PL_GLOBAL_SEED) as well as this datamodule's seed
        order_seed = self.seed * 65_537 + int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = EpochShuffleSampler(len(dataset), order_seed) if shuffle else None
        # a private generator for the workers' base seeds keeps iterator creation off the global RNG
        generator = torch.Generator().manual_seed(order_seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_items,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if not self._split_samples()["train"]:
            raise DataError(f"{self.dataset_name} under {self.root}: no training images")
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.resolved_validation == "none" or not self._split_samples()["val"]:
            return []  # Lightning skips validation
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)


def _at_least(value: Any, minimum: int, name: str) -> int:
    """``value`` as an int >= ``minimum``; anything else is a one-line error naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ValueError(f"data.init_args.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _category_list(category: str | Sequence[str], fallback: str | None = None) -> list[str]:
    if isinstance(category, str):
        if category == "all" and fallback is not None:
            return [fallback]
        return [category]
    return [str(c) for c in category]
