"""GoodsAD (PKU-GoodsAD): MVTec-style tree with JPEG images and same-stem PNG masks.

    <root>/<category>/train/good/NNNNNN.jpg
    <root>/<category>/test/<defect>/NNNNNN.jpg
    <root>/<category>/ground_truth/<defect>/NNNNNN.png

Images are 3000 x 3000; they are decoded at reduced JPEG scale and resized on load, and cached at
the model size. Defect folders differ per category and are enumerated from disk.
"""

from __future__ import annotations

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.mvtec_style import discover_mvtec_style_categories, index_mvtec_style, mask_same_stem
from anomaly_bench.types import Sample


class GoodsAD(AnomalyDataModule):
    """GoodsAD (6 categories on the official release; discovered from disk)."""

    dataset_name = "GoodsAD"
    default_validation = "none"

    def discover_categories(self) -> list[str]:
        return discover_mvtec_style_categories(self.root, self.dataset_name)

    def index_category(self, category: str) -> list[Sample]:
        return index_mvtec_style(self.root / category, category, mask_same_stem, self.dataset_name)
