"""Curves and areas from :class:`~anomaly_bench.metrics.ranking.CurvePoints`.

Definitions follow the reference evaluators (see docs in the package README):

* ROC area: trapezoid from (0,0) to (1,1); ties merged into one point = sklearn's ``roc_auc_score``.
* AP: step sum ``sum_k (R_k - R_{k-1}) * P_k`` = sklearn's ``average_precision_score``.
* PRO (MVTec AD ``pro_curve_util``): FPR over every pixel outside all regions of all test images;
  PRO = mean over regions of the flagged fraction; both clipped to <= 1; area from 0 to
  ``fpr_limit`` by the trapezoid rule with the point at the limit linearly interpolated, then
  divided by the limit so that a perfect map scores 1.
* sPRO (MVTec LOCO v2.0): as PRO with per-region weight 1/saturation on the top-``saturation``
  pixels of each ground-truth channel; same cut and normalisation.
* F1-max: the best F1 over all thresholds. It picks the threshold on the test labels, so it is an
  **oracle** number, never a deployable operating point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from anomaly_bench.metrics.ranking import CurvePoints

PRO_WEIGHT = "pro"
SPRO_WEIGHT = "spro"


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Plain trapezoid area (x non-decreasing)."""
    if len(x) < 2:
        return 0.0
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def check_limit(limit: float) -> None:
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"integration limit must be in (0, 1], got {limit}")


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area of the curve from x=0 to ``x = limit`` with the point at the limit linearly
    interpolated (the official MVTec ``trapezoid(..., x_max=limit)``), not normalised."""
    check_limit(limit)
    inside = int(np.searchsorted(x, limit, side="right"))  # bisect_right
    area = trapezoid(x[:inside], y[:inside])
    if inside < len(x) and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at_limit) * (limit - x0)
    return float(area)


def _safe_divide(numerator: np.ndarray, denominator: float) -> np.ndarray:
    return numerator / denominator if denominator > 0 else np.full_like(numerator, np.nan)


@dataclass
class RankingCurves:
    """All curves of one evaluation set (image level or pixel level).

    ``num_regions``: connected ground-truth regions (PRO's denominator); ``num_channels``:
    ground-truth channels (sPRO's denominator, LOCO only). ``operating``: exact counts at
    thresholds asked for (e.g. a fitted operating threshold): threshold -> (flagged negatives,
    flagged positives) with ``score >= threshold`` flagged.
    """

    points: CurvePoints
    num_regions: int = 0
    num_channels: int = 0
    mode: str = "exact"
    operating: dict[float, tuple[float, float]] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- ROC
    def fpr(self) -> np.ndarray:
        return _safe_divide(self.points.negatives, self.points.total_negatives)

    def tpr(self) -> np.ndarray:
        return _safe_divide(self.points.positives, self.points.total_positives)

    def auroc(self) -> float:
        if self.points.total_negatives == 0 or self.points.total_positives == 0:
            return math.nan
        return trapezoid(self.fpr(), self.tpr())

    # ----------------------------------------------------------------------------------- PR
    def precision(self) -> np.ndarray:
        flagged = self.points.positives + self.points.negatives
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(flagged > 0, self.points.positives / np.maximum(flagged, 1), 1.0)
        return precision

    def average_precision(self) -> float:
        if self.points.total_positives == 0:
            return math.nan
        recall = self.tpr()
        return float(np.sum(np.diff(recall) * self.precision()[1:]))

    def f1_max_oracle(self) -> tuple[float, float]:
        """(best F1, its threshold). Oracle: the threshold is chosen on the evaluated labels."""
        if self.points.total_positives == 0:
            return math.nan, math.nan
        tp = self.points.positives
        fp = self.points.negatives
        fn = self.points.total_positives - tp
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-300), 0.0)
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.points.thresholds[best])

    # ---------------------------------------------------------------------------------- PRO
    def pro(self) -> np.ndarray:
        weights = self.points.weights.get(PRO_WEIGHT)
        if weights is None or self.num_regions == 0:
            return np.full_like(self.points.negatives, np.nan)
        return np.minimum(weights / self.num_regions, 1.0)

    def aupro(self, fpr_limit: float = 0.3) -> float:
        check_limit(fpr_limit)
        if self.num_regions == 0 or self.points.total_negatives == 0:
            return math.nan
        return area_up_to(np.minimum(self.fpr(), 1.0), self.pro(), fpr_limit) / fpr_limit

    def spro(self) -> np.ndarray:
        weights = self.points.weights.get(SPRO_WEIGHT)
        if weights is None or self.num_channels == 0:
            return np.full_like(self.points.negatives, np.nan)
        return np.minimum(weights / self.num_channels, 1.0)

    def auspro(self, fpr_limit: float = 0.05) -> float:
        check_limit(fpr_limit)
        if self.num_channels == 0 or self.points.total_negatives == 0:
            return math.nan
        return area_up_to(np.minimum(self.fpr(), 1.0), self.spro(), fpr_limit) / fpr_limit
