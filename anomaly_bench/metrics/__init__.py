"""Metrics: one ranking core (exact sort / data-driven binned counts) feeding ROC, PR, PRO and
sPRO; torchmetrics ``Metric`` classes on top; one evaluation core (``accumulator``) behind the
``Evaluator`` callback and ``anomaly-bench evaluate``; operating thresholds fitted on normal images
(``thresholds``); the results files (``write_tables`` / ``read_tables``); a functional API."""

from anomaly_bench.metrics import functional
from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.ground_truth import GroundTruth, GroundTruthCache, ground_truth_from_mask
from anomaly_bench.metrics.metric_classes import (
    ImageAP,
    ImageAUROC,
    ImageF1Max,
    ImageRankingMetric,
    PixelAP,
    PixelAUPRO,
    PixelAUROC,
    PixelAUSPRO,
    PixelF1Max,
    PixelRankingMetric,
)
from anomaly_bench.metrics.pixel import BinningConfig
from anomaly_bench.metrics.report import MetricsFileError, read_tables, write_tables
from anomaly_bench.metrics.thresholds import (
    NormalScores,
    PixelSketch,
    Thresholds,
    fit_thresholds,
    fixed_thresholds,
    normalised_score,
)


def __getattr__(name: str):
    # The Evaluator needs Lightning (slow to import); the functional API and Metric classes do not.
    if name == "Evaluator":
        from anomaly_bench.metrics.evaluator import Evaluator

        return Evaluator
    raise AttributeError(f"module 'anomaly_bench.metrics' has no attribute {name!r}")

__all__ = [
    "BinningConfig",
    "Evaluator",
    "GroundTruth",
    "GroundTruthCache",
    "ImageAP",
    "ImageAUROC",
    "ImageF1Max",
    "ImageRankingMetric",
    "MetricsFileError",
    "NormalScores",
    "PixelAP",
    "PixelAUPRO",
    "PixelAUROC",
    "PixelAUSPRO",
    "PixelF1Max",
    "PixelRankingMetric",
    "PixelSketch",
    "RankingCurves",
    "Thresholds",
    "fit_thresholds",
    "fixed_thresholds",
    "functional",
    "ground_truth_from_mask",
    "normalised_score",
    "read_tables",
    "write_tables",
]
