"""The evaluation core, without Lightning: ground truth of an item, update, finish.

The ``Evaluator`` callback (a Lightning run) and ``anomaly-bench evaluate`` (maps saved by any
tool) both fill an :class:`EvaluationAccumulator` and write what its :meth:`finish` returns, so
the two cannot drift apart. Ground truth is read by the data layer's reader
(``data.io.read_mask_files``, the datasets' reader too) and stored sparsely
(``ground_truth.GroundTruthCache``); the LOCO logical / structural split comes from the items'
``subset`` (``Sample.subset``), never from folder names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anomaly_bench.metrics.ground_truth import GroundTruth, GroundTruthCache
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.ranking import MODES
from anomaly_bench.metrics.report import (
    CategoryResult,
    ReportConfig,
    category_result,
    image_tag,
    stable_id,
    with_mean_row,
    write_tables,
)
from anomaly_bench.metrics.thresholds import Thresholds, thresholds_for, thresholds_record
from anomaly_bench.types import LABEL_ANOMALOUS, LABEL_NORMAL, Batch, DefectSpec, Sample

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteScoresError(ValueError):
    """A model returned NaN or inf scores; the message names the images and the model."""


@dataclass(frozen=True)
class EvalItem:
    """What the evaluation needs to know about one image.

    Attributes:
        path: the image file (named in errors; its hash de-duplicates DDP padding).
        category: the image's category (one results row each).
        label: 0 normal, 1 anomalous, -1 unknown (skipped).
        subset: ``logical`` | ``structural`` | ``""`` (``Sample.subset``).
        mask_paths: the ground-truth mask files (empty for normal images).
        defects: one ``DefectSpec`` per mask file (MVTec LOCO; empty elsewhere).
        orig_size: (H, W) of the image on disk; None reads it from the file's header when needed.
        model_mask: the ground truth at the model's size (``batch.mask``), used only when an
            anomalous image has no mask files.
    """

    path: str
    category: str
    label: int
    subset: str = ""
    mask_paths: tuple[str, ...] = ()
    defects: tuple[DefectSpec, ...] = ()
    orig_size: tuple[int, int] | None = None
    model_mask: Tensor | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def from_batch(batch: Batch) -> list["EvalItem"]:
        """One item per image of a collated batch.

        Args:
            batch: a ``Batch`` from an anomaly_bench dataloader.
        """
        labels = [int(v) for v in batch.label.tolist()]
        sizes = batch.orig_size.tolist()

        def at(values: list, i: int, default: Any) -> Any:
            return values[i] if i < len(values) else default

        return [
            EvalItem(batch.path[i], batch.category[i], labels[i], at(batch.subset, i, ""),
                     tuple(at(batch.mask_paths, i, ())), tuple(at(batch.defects, i, ())),
                     (int(sizes[i][0]), int(sizes[i][1])), batch.mask[i])
            for i in range(len(labels))
        ]

    @staticmethod
    def from_sample(sample: Sample) -> "EvalItem":
        """The item of an index entry (native size read from the file when needed).

        Args:
            sample: a ``Sample`` from a datamodule's index.
        """
        return EvalItem(sample.image_path, sample.category, sample.label, sample.subset,
                        tuple(sample.mask_paths), tuple(sample.defects))


def parse_resolution(resolution: str | int | Sequence[int]) -> str | tuple[int, int]:
    """``native`` | ``model`` | an int (square) | ``[h, w]``; errors name the value.

    Args:
        resolution: the evaluation resolution as configured.
    """
    if isinstance(resolution, str):
        if resolution in ("native", "model"):
            return resolution
        if resolution.isdigit() and int(resolution) > 0:
            return (int(resolution), int(resolution))
        raise ValueError(f"evaluation resolution must be 'native', 'model', an int or [h, w], got {resolution!r}")
    if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution > 0:
        return (resolution, resolution)
    try:
        values = tuple(int(v) for v in resolution)  # type: ignore[union-attr]
    except TypeError:
        values = ()
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"evaluation resolution must be [h, w] with positive sizes, got {resolution!r}")
    return values  # type: ignore[return-value]


@dataclass
class EvaluationConfig:
    """How the metrics are computed (see the ``Evaluator`` for each option's meaning).

    Attributes:
        resolution: ``native`` | ``model`` | ``(h, w)`` (parsed by :func:`parse_resolution`).
        mode: ``auto`` | ``exact`` | ``binned`` pixel curves.
        fpr_limit: AU-PRO integration limit.
        spro_limits: AU-sPRO limits (MVTec LOCO).
        exact_max_pixels: ``auto`` switch point (pixels per category).
        num_bins: binned mode's edges from a sample of all scores.
        num_positive_bins: binned mode's edges from the positive scores.
        sample_size: binned mode's sample of all scores.
        store_dtype: ``float32`` | ``float16`` | ``bfloat16`` stored maps.
        oracle_f1: add the F1-max oracle columns.
    """

    resolution: str | int | Sequence[int] = "native"
    mode: str = "auto"
    fpr_limit: float = 0.3
    spro_limits: Sequence[float] = (0.05, 0.3)
    exact_max_pixels: int = 50_000_000
    num_bins: int = 16384
    num_positive_bins: int = 4096
    sample_size: int = 2_000_000
    store_dtype: str = "float32"
    oracle_f1: bool = True

    def __post_init__(self) -> None:
        self.resolution = parse_resolution(self.resolution)
        if self.mode not in MODES:
            raise ValueError(f"evaluation mode must be one of {MODES}, got {self.mode!r}")
        self.spro_limits = tuple(float(v) for v in self.spro_limits)
        if not 0 < self.fpr_limit <= 1 or any(not 0 < v <= 1 for v in self.spro_limits):
            raise ValueError(f"integration limits must be in (0, 1], got fpr_limit={self.fpr_limit}, "
                             f"spro_limits={list(self.spro_limits)}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {self.store_dtype!r}")

    def report_config(self) -> ReportConfig:
        """The settings :func:`write_tables` records."""
        resolution = self.resolution if isinstance(self.resolution, str) else list(self.resolution)
        return ReportConfig(
            float(self.fpr_limit), tuple(self.spro_limits), self.oracle_f1, resolution, self.mode,
            {"exact_max_pixels": self.exact_max_pixels, "num_bins": self.num_bins,
             "num_positive_bins": self.num_positive_bins, "sample_size": self.sample_size,
             "store_dtype": self.store_dtype},
        )

    def pixel_metric(self) -> PixelRankingMetric:
        """An empty pixel-metric state with these settings."""
        return PixelRankingMetric(
            mode=self.mode, fpr_limit=self.fpr_limit, exact_max_pixels=self.exact_max_pixels,
            num_bins=self.num_bins, num_positive_bins=self.num_positive_bins, sample_size=self.sample_size,
            store_dtype=STORE_DTYPES[self.store_dtype], sync_on_compute=False,
        )


@dataclass
class EvaluationResult:
    """What :meth:`EvaluationAccumulator.finish` returns.

    Attributes:
        rows: one row per category plus ``mean`` (what ``metrics.csv`` holds).
        categories: each category's row and curves (for plots and curve files).
        modes_used: category -> ``exact`` | ``binned`` (pixel curves).
        without_pixel_metrics: categories with anomalous images lacking a mask (no pixel metrics).
        thresholds: the ``metrics.json`` record of the operating thresholds used (None: none).
    """

    rows: list[dict[str, Any]]
    categories: list[CategoryResult]
    modes_used: dict[str, str]
    without_pixel_metrics: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] | None = None

    def write(self, folder: str | Path, config: EvaluationConfig, extra: Mapping[str, Any] | None = None,
              plots: bool = True) -> None:
        """Write ``metrics.csv`` / ``metrics.json`` (and ``curves/<category>.png``) into ``folder``.

        Args:
            folder: the run directory or output folder.
            config: the settings the numbers were computed with.
            extra: further ``metrics.json`` keys (``stage``, where maps came from...).
            plots: also draw the curve plots (a failing plot only warns: it never costs the numbers).
        """
        if not self.rows:
            return
        info = {"modes_used": self.modes_used, **(dict(extra) if extra else {})}
        if self.thresholds is not None:
            info["thresholds"] = self.thresholds
        write_tables(self.rows, folder, config.report_config(), info)
        self.write_curve_points(folder, config)
        if plots:
            self.plot(folder, config)

    def write_curve_points(self, folder: str | Path, config: EvaluationConfig) -> None:
        """``<folder>/curves/<category>.json``: the curves as data (for ``anomaly-bench report``);
        failures warn, never raise.

        Args:
            folder: the run directory or output folder.
            config: the limits the areas were computed with.
        """
        from anomaly_bench.metrics.curve_data import write_category_curves

        for result in self.categories:
            try:
                write_category_curves(folder, result, config.fpr_limit, config.spro_limits)
            except Exception as err:  # the curves as data must never cost the numbers
                warnings.warn(f"could not save the curve points of {result.row.get('category')!r}: {err}",
                              stacklevel=2)

    def plot(self, folder: str | Path, config: EvaluationConfig) -> None:
        """``<folder>/curves/<category>.png`` per category; failures warn, never raise.

        Args:
            folder: the run directory or output folder.
            config: the limits drawn on the plots.
        """
        try:
            from anomaly_bench.metrics.plots import plot_category, safe_name

            spro = config.spro_limits[0] if config.spro_limits else 0.05
            for result in self.categories:
                name = result.row["category"]
                plot_category(Path(folder) / "curves" / f"{safe_name(name)}.png", name, result.image_curves,
                              result.pixel_curves, config.fpr_limit, spro)
        except Exception as err:  # a plot must never cost the numbers
            warnings.warn(f"could not save curve plots: {err}", stacklevel=2)


def _finite_per_image(values: Tensor | Sequence[Tensor]) -> list[bool]:
    if isinstance(values, Tensor):
        if values.ndim == 1:
            return torch.isfinite(values).cpu().tolist()
        return torch.isfinite(values.detach()).flatten(1).all(1).cpu().tolist()
    return [bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values]


class EvaluationAccumulator:
    """Metric states of one evaluation (a test epoch, a folder of maps) and how to fill them.

    Args:
        config: how the metrics are computed.
        with_pixels: also keep maps and ground truth (pixel metrics); False: image metrics only.
        defect_tables: MVTec LOCO ``defects_config.json`` entries per category, to find each mask
            file's ``DefectSpec`` by its value when the items do not carry ``defects``.
        truths: a ground-truth cache to share between epochs (a new one by default).
    """

    def __init__(
        self,
        config: EvaluationConfig,
        with_pixels: bool = True,
        defect_tables: Mapping[str, Mapping[int, DefectSpec]] | None = None,
        truths: GroundTruthCache | None = None,
    ) -> None:
        self.config = config
        self.images = ImageRankingMetric(sync_on_compute=False)
        self.pixels = config.pixel_metric() if with_pixels else None
        self.names: dict[int, str] = {}
        self.defect_tables = dict(defect_tables or {})
        self.truths = truths if truths is not None else GroundTruthCache()

    # --------------------------------------------------------------------- ground truth
    def ground_truth(self, item: EvalItem) -> GroundTruth | None:
        """Ground truth of an item at the evaluation resolution; None when an anomalous image has none.

        Args:
            item: the image.
        """
        resolution = self.config.resolution
        if resolution == "native":
            size = None
        elif resolution == "model":
            if item.model_mask is None:
                raise ValueError("resolution 'model' needs the model-size mask of each item (batch.mask)")
            size = tuple(int(v) for v in item.model_mask.shape[-2:])
        else:
            size = tuple(resolution)
        if item.label == LABEL_NORMAL:
            if size is None:
                from anomaly_bench.data.io import image_size_on_disk

                size = item.orig_size or image_size_on_disk(item.path)
            return GroundTruth.normal(*size)
        if item.mask_paths:
            table = None if item.defects else self.defect_tables.get(item.category)
            return self.truths.from_files(
                item.mask_paths, item.defects, size, with_channels=bool(item.defects) or table is not None,
                native_hw=item.orig_size, defect_lookup=table, category=item.category,
            )
        if size is None or item.model_mask is None or not bool(item.model_mask.any()):
            return None
        return self.truths.from_array(item.path, item.model_mask, size)

    # --------------------------------------------------------------------------- update
    def update(
        self,
        scores: Tensor,
        anomaly_maps: Tensor | Sequence[Tensor] | None,
        items: Sequence[EvalItem],
        source: str = "the model",
    ) -> None:
        """Add raw image scores [B] and maps ([B, h, w] or a list of [h, w]) of ``items``.

        Args:
            scores: raw image scores, one per item.
            anomaly_maps: raw maps, one per item (None: image metrics only).
            items: the images, in the same order.
            source: who produced the scores (named in errors, e.g. ``model CRAD``).
        """
        scores = torch.as_tensor(scores).detach().reshape(-1)
        if scores.numel() != len(items):
            raise ValueError(f"{scores.numel()} scores for {len(items)} images")
        self._check_finite(scores, "image scores", items, source)
        if anomaly_maps is not None and self.pixels is not None:
            self._check_finite(anomaly_maps, "anomaly maps", items, source)
        keep = [i for i, item in enumerate(items) if item.label in (LABEL_NORMAL, LABEL_ANOMALOUS)]
        if not keep:
            return
        groups, tags, keys = [], [], []
        for i in keep:
            category = items[i].category
            group = stable_id(category)
            known = self.names.setdefault(group, category)
            if known != category:
                raise ValueError(f"category ids collide: {known!r} and {category!r}")
            groups.append(group)
            tags.append(image_tag(items[i].label, items[i].subset))
            keys.append(stable_id(items[i].path))
        with_pixels = self.pixels is not None and anomaly_maps is not None
        truths = [self.ground_truth(items[i]) for i in keep] if with_pixels else [None] * len(keep)
        has_truth = [truth is not None for truth in truths]
        labels = torch.tensor([items[i].label for i in keep])
        self.images.update(scores.float().cpu()[keep], labels, tags, groups, keys, has_truth)
        chosen = [n for n, ok in enumerate(has_truth) if ok]
        if with_pixels and chosen:
            maps = anomaly_maps.detach().cpu() if isinstance(anomaly_maps, Tensor) else anomaly_maps
            self.pixels.update(
                [torch.as_tensor(maps[keep[n]]) for n in chosen],
                ground_truths=[truths[n] for n in chosen],
                tags=[tags[n] for n in chosen], groups=[groups[n] for n in chosen], keys=[keys[n] for n in chosen],
            )

    @staticmethod
    def _check_finite(values: Tensor | Sequence[Tensor], what: str, items: Sequence[EvalItem], source: str) -> None:
        bad = [item.path for item, ok in zip(items, _finite_per_image(values)) if not ok]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteScoresError(
                f"{source} returned NaN or inf {what} for {len(bad)} image(s): {shown}; the metrics need "
                "finite raw scores (check the model's numerics, e.g. a division by a zero std or a "
                "diverged training)"
            )

    # --------------------------------------------------------------------------- finish
    def mean_image_auroc(self) -> float | None:
        """Mean over categories of the image AUROC, over categories with both classes (None: none)."""
        values = []
        for group in sorted(self.names):
            curves = self.images.curves(group=group)
            if curves.points.total_positives and curves.points.total_negatives:
                values.append(curves.auroc())
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else None

    def finish(
        self,
        thresholds: Thresholds | Mapping[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> EvaluationResult:
        """Every category's numbers plus the mean row.

        Args:
            thresholds: operating thresholds fitted on normal images (one ``Thresholds``, its dict,
                or one per category); adds precision / recall / F1 at them.
            device: where the exact pixel sort runs.
        """
        config = self.config.report_config()
        if self.pixels is not None:
            self.pixels.compute_device = device
        results, modes, missing = [], {}, []
        for group, name in sorted(self.names.items(), key=lambda item: item[1]):
            result = category_result(name, group, self.images, self.pixels, config, thresholds_for(thresholds, name))
            if result.pixel_curves:
                modes[name] = result.pixel_curves["all"].mode if "all" in result.pixel_curves else "-"
            elif self.pixels is not None and result.row.get("num_anomalous"):
                missing.append(name)
            results.append(result)
        if missing:
            warnings.warn(f"no pixel metrics for {missing}: some anomalous test images have no ground-truth mask",
                          stacklevel=2)
        rows = with_mean_row([r.row for r in results])
        return EvaluationResult(rows, results, modes, missing, thresholds_record(thresholds))
