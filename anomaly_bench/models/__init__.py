"""Anomaly-detection methods. Each is an ``AnomalyModule`` (see ``base.py``)."""

from anomaly_bench.models.base import AnomalyModule

__all__ = ["AnomalyModule"]
