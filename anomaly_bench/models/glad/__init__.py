"""GLAD: global and local adaptive diffusion models for unsupervised anomaly detection (ECCV 2024)."""

from anomaly_bench.models.glad.lightning_model import GLAD
from anomaly_bench.models.glad.torch_model import GLADModel

__all__ = ["GLAD", "GLADModel"]
