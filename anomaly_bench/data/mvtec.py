"""MVTec AD: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``.

Images are PNG (grid, screw and zipper are grayscale and are converted to RGB); masks are 0/255.
There is no validation split: ``validation`` defaults to ``none`` (``train_holdout`` is available).
"""

from __future__ import annotations

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.mvtec_style import discover_mvtec_style_categories, index_mvtec_style, mask_with_suffix
from anomaly_bench.types import Sample


class MVTecAD(AnomalyDataModule):
    """MVTec AD (15 categories on the official release; discovered from disk)."""

    dataset_name = "MVTecAD"
    default_validation = "none"

    def discover_categories(self) -> list[str]:
        return discover_mvtec_style_categories(self.root, self.dataset_name)

    def index_category(self, category: str) -> list[Sample]:
        return index_mvtec_style(self.root / category, category, mask_with_suffix, self.dataset_name)
