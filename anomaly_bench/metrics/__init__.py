"""Metrics: one ranking core (exact sort / data-driven binned counts) feeding ROC, PR, PRO and
sPRO; torchmetrics ``Metric`` classes on top; the ``Evaluator`` callback; a functional API."""

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
    "PixelAP",
    "PixelAUPRO",
    "PixelAUROC",
    "PixelAUSPRO",
    "PixelF1Max",
    "PixelRankingMetric",
    "RankingCurves",
    "functional",
    "ground_truth_from_mask",
]
