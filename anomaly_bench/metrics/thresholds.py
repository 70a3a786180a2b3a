"""Operating thresholds fitted on normal images only, and the score normalised to them.

A deployed detector needs one number to say "anomalous": the test metrics (AUROC, AP, AU-PRO) are
threshold-free, so they cannot tell a user what the model would flag. Here a threshold for image
scores and one for pixel values are fitted on *normal* images the model did not train on (e.g.
the validation split): the score above which only ``target_fpr`` of normal images (pixels) lie,
a quantile of the normal scores. A fixed value is the other method. Test labels are never used:
a threshold chosen on test data is an oracle (see ``image_f1max_oracle``).

Rule: an image (pixel) is flagged when its score is ``>= threshold``. The fitted threshold lies
strictly between two normal scores, so at most ``floor(target_fpr * n)`` of the ``n`` calibration
normals are flagged; on fresh normals from the same distribution the expected rate is about
``target_fpr`` (it needs ``n >= 1 / target_fpr`` normals to mean anything; fewer flags none).

Pixels: a test set has millions of normal pixels, so they are never held all at once.
:class:`PixelSketch` keeps a uniform random sample of at most ``capacity`` values (bottom-k of
seeded random keys: deterministic for a given input order). While fewer values than ``capacity``
were seen it holds every one of them and the pixel threshold is exact; beyond that the flagged
fraction of normal pixels at the fitted threshold is off by a standard error of
``sqrt(p (1 - p) / capacity)`` (p = ``target_fpr``; 1e-4 at p = 1 % and one million values),
recorded as ``pixel_rank_error``.

:func:`normalised_score` maps a raw score so that 1.0 is the threshold (0.0 the median normal
image): for display only, never for the metrics, which always use raw scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

QUANTILE = "quantile"
FIXED = "fixed"
METHODS = (QUANTILE, FIXED)
DEFAULT_TARGET_FPR = 0.01
DEFAULT_PIXEL_CAPACITY = 1_000_000


class ThresholdError(ValueError):
    """Thresholds cannot be fitted or read: no normal scores, a bad target, a malformed record."""


def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size and not np.isfinite(array).all():
        raise ThresholdError(f"{what} contain NaN or inf ({int((~np.isfinite(array)).sum())} values)")
    return array


def _check_target(target_fpr: float) -> float:
    target = float(target_fpr)
    if not 0.0 < target < 1.0:
        raise ThresholdError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
    return target


def quantile_threshold(normal_scores: Any, target_fpr: float = DEFAULT_TARGET_FPR) -> float:
    """The lowest threshold that flags at most ``floor(target_fpr * n)`` of ``n`` normal scores.

    It lies halfway between the highest score that must stay unflagged and the next higher
    distinct score, so ties never tip the count over the target.

    Args:
        normal_scores: scores of normal images (or pixels); any shape, raw values.
        target_fpr: the share of normals allowed at or above the threshold, in (0, 1).
    """
    target = _check_target(target_fpr)
    scores = np.sort(_as_array(normal_scores, "normal scores"))
    n = scores.size
    if n == 0:
        raise ThresholdError("cannot fit a threshold: no normal scores were given")
    allowed = int(math.floor(target * n + 1e-9))  # normals that may be flagged
    below = scores[n - allowed - 1]  # the highest score that must stay below the threshold
    above_index = int(np.searchsorted(scores, below, side="right"))
    if above_index >= n:  # nothing above it: flag nothing
        return float(np.nextafter(below, np.inf))
    above = scores[above_index]
    threshold = below + (above - below) / 2.0
    return float(threshold if below < threshold <= above else above)


class PixelSketch:
    """A bounded, deterministic uniform sample of pixel values (bottom-k of seeded random keys).

    Holds every value while at most ``capacity`` were seen (quantiles exact), a uniform sample of
    ``capacity`` of them afterwards. Memory: ``capacity`` values and keys (12 MB at one million).

    Args:
        capacity: values kept at most.
        seed: seeds the random keys (same values in the same order -> the same sample).
    """

    def __init__(self, capacity: int = DEFAULT_PIXEL_CAPACITY, seed: int = 0) -> None:
        if int(capacity) < 1:
            raise ThresholdError(f"PixelSketch capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.total = 0
        self._rng = np.random.default_rng(self.seed)
        self._values: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._held = 0

    def update(self, values: Any) -> None:
        """Add pixel values (any shape; NaN / inf is an error)."""
        array = _as_array(values, "normal pixel values").astype(np.float32)
        if array.size == 0:
            return
        self._values.append(array)
        self._keys.append(self._rng.random(array.size))
        self.total += array.size
        self._held += array.size
        if self._held > 2 * self.capacity:
            self._compress()

    def _compress(self) -> None:
        values = np.concatenate(self._values) if self._values else np.empty(0, np.float32)
        keys = np.concatenate(self._keys) if self._keys else np.empty(0)
        if values.size > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keep.sort()  # keep arrival order: the result does not depend on argpartition's order
            values, keys = values[keep], keys[keep]
        self._values, self._keys, self._held = [values], [keys], values.size

    @property
    def exact(self) -> bool:
        """True while every value seen is held (quantiles are exact)."""
        return self.total <= self.capacity

    def values(self) -> np.ndarray:
        """The held values (all of them while ``exact``, else the sample)."""
        self._compress()
        return self._values[0] if self._values else np.empty(0, np.float32)

    def rank_error(self, target_fpr: float) -> float:
        """Standard error of the normal-pixel rate flagged at a threshold fitted for ``target_fpr``.

        Args:
            target_fpr: the target the threshold is fitted for.
        """
        if self.exact:
            return 0.0
        return math.sqrt(target_fpr * (1.0 - target_fpr) / self.capacity)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to refit later (e.g. stored in a checkpoint)."""
        return {"capacity": self.capacity, "seed": self.seed, "total": self.total,
                "values": torch.from_numpy(self.values().copy()),
                "keys": torch.from_numpy(self._keys[0].copy() if self._keys else np.empty(0)),
                "rng": self._rng.bit_generator.state}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "PixelSketch":
        """Rebuild a sketch written by :meth:`state_dict`.

        Args:
            state: the dict :meth:`state_dict` returned.
        """
        sketch = cls(int(state["capacity"]), int(state["seed"]))
        sketch.total = int(state["total"])
        values = np.asarray(state["values"], dtype=np.float32).reshape(-1)
        keys = np.asarray(state["keys"], dtype=np.float64).reshape(-1)
        if values.size != keys.size:
            raise ThresholdError(f"PixelSketch state: {values.size} values but {keys.size} keys")
        sketch._values, sketch._keys, sketch._held = [values], [keys], values.size
        sketch._rng.bit_generator.state = state["rng"]
        return sketch


@dataclass(frozen=True)
class Thresholds:
    """Fitted (or fixed) operating thresholds and where they came from.

    Attributes:
        image: image-score threshold (flag ``score >= image``); None when not fitted.
        pixel: pixel-value threshold for anomaly maps; None when not fitted.
        target_fpr: the normal false-positive rate the quantiles were fitted for (None: fixed).
        method: ``quantile`` | ``fixed``.
        num_images: normal images the image threshold was fitted on.
        num_pixels: normal pixels seen for the pixel threshold.
        source: where the normals came from (e.g. ``validation split, normal images``).
        pixel_rank_error: standard error of the flagged normal-pixel rate caused by sampling
            (0 when every pixel was held).
        image_reference: the median normal image score: 0.0 of the normalised image score.
        pixel_reference: the median normal pixel value: 0.0 of the normalised map.
    """

    image: float | None
    pixel: float | None = None
    target_fpr: float | None = DEFAULT_TARGET_FPR
    method: str = QUANTILE
    num_images: int = 0
    num_pixels: int = 0
    source: str = ""
    pixel_rank_error: float = 0.0
    image_reference: float | None = None
    pixel_reference: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ThresholdError(f"Thresholds.method must be one of {METHODS}, got {self.method!r}")
        for name in ("image", "pixel", "target_fpr", "image_reference", "pixel_reference"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ThresholdError(f"Thresholds.{name} must be a finite number or None, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict (``metrics.json`` key ``thresholds``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "thresholds") -> "Thresholds":
        """The inverse of :meth:`to_dict`; unknown keys are an error naming ``where``.

        Args:
            data: a dict written by :meth:`to_dict`.
            where: what to name in errors (a file and key).
        """
        if not isinstance(data, Mapping):
            raise ThresholdError(f"{where} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ThresholdError(f"{where} has unknown keys {unknown}; expected some of {sorted(known)}")
        if "image" not in data:
            raise ThresholdError(f"{where} lacks the key 'image'")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise ThresholdError(f"{where}: {err}") from None

    def normalised_image_score(self, score: Any) -> Any:
        """An image score on the display scale: 1.0 at the threshold, 0.0 at the median normal.

        Args:
            score: raw image score(s): float, numpy array or tensor.
        """
        if self.image is None:
            raise ThresholdError("no image threshold to normalise to")
        return normalised_score(score, self.image, self.image_reference or 0.0)

    def normalised_map(self, anomaly_map: Any) -> Any:
        """An anomaly map on the display scale: 1.0 at the pixel threshold.

        Args:
            anomaly_map: raw map(s): numpy array or tensor.
        """
        if self.pixel is None:
            raise ThresholdError("no pixel threshold to normalise to")
        return normalised_score(anomaly_map, self.pixel, self.pixel_reference or 0.0)


def normalised_score(score: Any, threshold: float, reference: float = 0.0) -> Any:
    """``(score - reference) / (threshold - reference)``: 1.0 = the threshold. Display only.

    Args:
        score: raw score(s): float, numpy array or tensor (the type is kept).
        threshold: the operating threshold (maps to 1.0).
        reference: the score that maps to 0.0 (e.g. the median normal score); 0 by default.
    """
    span = float(threshold) - float(reference)
    if span == 0.0 or not math.isfinite(span):
        raise ThresholdError(f"cannot normalise to threshold {threshold} with reference {reference}")
    return (score - reference) / span


def _labels(labels: Any) -> np.ndarray:
    return np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)


def _normals_only(scores: np.ndarray, labels: Any) -> np.ndarray:
    """Scores of the normal images; anomalous ones are dropped, unknown labels refused."""
    if labels is None:
        return scores
    label_array = _labels(labels)
    if label_array.size != scores.size:
        raise ThresholdError(f"{scores.size} scores but {label_array.size} labels")
    if (label_array < 0).any():
        raise ThresholdError("thresholds are fitted on labelled normal images; got unknown labels (-1)")
    return scores[label_array == 0]


class NormalScores:
    """Collects the image scores and map pixels of normal images, then fits :class:`Thresholds`.

    Anomalous images passed in are ignored (a threshold is fitted on normals only); images of
    unknown label are refused. Fitting does not consume the data: :meth:`fit` can be called again
    at another target (refit).

    Args:
        pixel_capacity: pixel values kept at most (see :class:`PixelSketch`).
        seed: seeds the pixel sample.
    """

    def __init__(self, pixel_capacity: int = DEFAULT_PIXEL_CAPACITY, seed: int = 0) -> None:
        self._scores: list[np.ndarray] = []
        self.pixels = PixelSketch(pixel_capacity, seed)
        self.num_pixel_images = 0
        self.ignored = 0

    def update(self, scores: Any, anomaly_maps: Any = None, labels: Any = None) -> None:
        """Add a batch.

        Args:
            scores: raw image scores [B].
            anomaly_maps: raw maps [B, h, w] (or None: image threshold only).
            labels: [B] 0 normal / 1 anomalous (ignored) / -1 unknown (refused); None = all normal.
        """
        score_array = _as_array(scores, "normal image scores")
        normal = _normals_only(score_array, labels)
        self.ignored += score_array.size - normal.size
        self._scores.append(normal)
        if anomaly_maps is None:
            return
        keep = range(score_array.size) if labels is None else np.flatnonzero(_labels(labels) == 0).tolist()
        for i in keep:
            self.pixels.update(anomaly_maps[i])
            self.num_pixel_images += 1

    @property
    def image_scores(self) -> np.ndarray:
        """Every normal image score collected so far."""
        return np.concatenate(self._scores) if self._scores else np.empty(0)

    def fit(self, target_fpr: float = DEFAULT_TARGET_FPR, source: str = "") -> Thresholds:
        """Quantile thresholds at ``target_fpr`` (pixel one only when maps were given).

        Args:
            target_fpr: normal false-positive rate to aim for, in (0, 1).
            source: where the normals came from, recorded in the result.
        """
        scores = self.image_scores
        pixel_values = self.pixels.values()
        return Thresholds(
            image=quantile_threshold(scores, target_fpr),
            pixel=quantile_threshold(pixel_values, target_fpr) if pixel_values.size else None,
            target_fpr=_check_target(target_fpr),
            method=QUANTILE,
            num_images=int(scores.size),
            num_pixels=int(self.pixels.total),
            source=source,
            pixel_rank_error=self.pixels.rank_error(target_fpr) if pixel_values.size else 0.0,
            image_reference=float(np.median(scores)),
            pixel_reference=float(np.median(pixel_values)) if pixel_values.size else None,
        )


def fit_thresholds(
    image_scores: Any,
    anomaly_maps: Sequence[Any] | Any = None,
    target_fpr: float = DEFAULT_TARGET_FPR,
    labels: Any = None,
    source: str = "",
    pixel_capacity: int = DEFAULT_PIXEL_CAPACITY,
) -> Thresholds:
    """Fit (or refit, from stored scores) quantile thresholds in one call.

    Args:
        image_scores: raw scores of the calibration images [N].
        anomaly_maps: their raw maps ([N, h, w] or a list of [h, w]); None: image threshold only.
        target_fpr: normal false-positive rate to aim for, in (0, 1).
        labels: [N] labels; anomalous images are ignored, unknown (-1) refused; None = all normal.
        source: where the normals came from.
        pixel_capacity: pixel values kept at most (see :class:`PixelSketch`).
    """
    collector = NormalScores(pixel_capacity)
    collector.update(image_scores, anomaly_maps, labels)
    return collector.fit(target_fpr, source)


def fixed_thresholds(image: float | None, pixel: float | None = None,
                     source: str = "fixed by the user") -> Thresholds:
    """Thresholds given as values, not fitted.

    Args:
        image: image-score threshold.
        pixel: pixel-value threshold.
        source: recorded as the thresholds' origin.
    """
    as_float = lambda value: None if value is None else float(value)  # noqa: E731
    return Thresholds(image=as_float(image), pixel=as_float(pixel), target_fpr=None, method=FIXED, source=source)


def counts_at(scores: Any, labels: Any, threshold: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) when ``score >= threshold`` is flagged.

    Args:
        scores: raw scores [N].
        labels: [N], 1 anomalous, 0 normal.
        threshold: the operating threshold.
    """
    score_array = _as_array(scores, "scores")
    anomalous = _labels(labels) == 1
    flagged = score_array >= threshold
    return int((flagged & anomalous).sum()), int((flagged & ~anomalous).sum()), int((~flagged & anomalous).sum())


def precision_recall_f1(
    true_positives: float, false_positives: float, false_negatives: float
) -> dict[str, float | None]:
    """Precision, recall and F1 from counts; a ratio with an empty denominator is None.

    Args:
        true_positives: flagged anomalous items.
        false_positives: flagged normal items.
        false_negatives: anomalous items not flagged.
    """
    flagged = true_positives + false_positives
    actual = true_positives + false_negatives
    f1_denominator = 2 * true_positives + false_positives + false_negatives
    return {
        "precision": true_positives / flagged if flagged > 0 else None,
        "recall": true_positives / actual if actual > 0 else None,
        "f1": 2 * true_positives / f1_denominator if f1_denominator > 0 else None,
    }


def _is_record(value: Mapping[str, Any]) -> bool:
    return "image" in value and set(value) <= {f.name for f in fields(Thresholds)}


def as_thresholds(value: Thresholds | Mapping[str, Any], where: str = "thresholds") -> Thresholds:
    """A ``Thresholds`` from itself or its dict (e.g. read back from a checkpoint or JSON).

    Args:
        value: a ``Thresholds`` or a dict written by ``Thresholds.to_dict``.
        where: what to name in errors.
    """
    if isinstance(value, Thresholds):
        return value
    return Thresholds.from_dict(value, where)


def thresholds_for(value: Thresholds | Mapping[str, Any] | None, category: str) -> Thresholds | None:
    """The thresholds that apply to ``category``: one for every category, or a per-category
    mapping (``{category: Thresholds}``, ``"all"`` as the fallback).

    Args:
        value: None, a ``Thresholds`` (or its dict), or a mapping category -> ``Thresholds``.
        category: the category asked about.
    """
    if value is None:
        return None
    if isinstance(value, Thresholds) or _is_record(value):
        return as_thresholds(value)
    chosen = value.get(category, value.get("all"))
    return None if chosen is None else as_thresholds(chosen, f"thresholds[{category!r}]")


def thresholds_record(value: Thresholds | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``metrics.json`` ``thresholds`` entry: ``Thresholds.to_dict()`` for one set; for one
    set per category, ``image`` / ``pixel`` become ``{category: value}`` and ``per_category``
    holds every record.

    Args:
        value: None, a ``Thresholds`` (or its dict), or a mapping category -> ``Thresholds``.
    """
    if value is None:
        return None
    if isinstance(value, Thresholds) or _is_record(value):
        return as_thresholds(value).to_dict()
    records = {str(c): as_thresholds(t, f"thresholds[{c!r}]").to_dict() for c, t in value.items()}
    first = next(iter(records.values()), {})

    def common(key: str) -> Any:
        return first.get(key) if all(r.get(key) == first.get(key) for r in records.values()) else None

    return {
        "image": {c: r["image"] for c, r in records.items()},
        "pixel": {c: r["pixel"] for c, r in records.items()},
        "target_fpr": common("target_fpr"),
        "method": common("method"),
        "source": common("source"),
        "per_category": records,
    }
