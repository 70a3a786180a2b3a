"""CRAD: continuous memory representation for anomaly detection (see README.md)."""

from anomaly_bench.models.crad.lightning_model import CRAD
from anomaly_bench.models.crad.torch_model import CRADHead, CRADModel, Reconstruction

__all__ = ["CRAD", "CRADHead", "CRADModel", "Reconstruction"]
