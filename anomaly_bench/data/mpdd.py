"""MPDD (metal parts): the MVTec AD layout, ``ground_truth/<defect>/<stem>_mask.png``.

The official README calls the test split "validation"; the download still uses ``test/``.
``validation`` defaults to ``none``.
"""

from __future__ import annotations

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.mvtec_style import discover_mvtec_style_categories, index_mvtec_style, mask_with_suffix
from anomaly_bench.types import Sample


class MPDD(AnomalyDataModule):
    """MPDD (6 categories on the official release; discovered from disk)."""

    dataset_name = "MPDD"
    default_validation = "none"

    def discover_categories(self) -> list[str]:
        return discover_mvtec_style_categories(self.root, self.dataset_name)

    def index_category(self, category: str) -> list[Sample]:
        return index_mvtec_style(self.root / category, category, mask_with_suffix, self.dataset_name)
