"""Anomaly-detection methods. Each is an ``AnomalyModule`` (see ``base.py``).

Importing this package registers every method with the CLI, so ``--model CRAD`` resolves.
"""

from anomaly_bench.models.base import AnomalyModule
from anomaly_bench.models.crad import CRAD
from anomaly_bench.models.glad import GLAD
from anomaly_bench.models.grad import BiGridGRAD
from anomaly_bench.models.patchdiff import PatchDiffGRAD

__all__ = ["AnomalyModule", "BiGridGRAD", "CRAD", "GLAD", "PatchDiffGRAD"]
