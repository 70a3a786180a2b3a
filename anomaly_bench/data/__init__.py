"""Datasets: one module per on-disk layout on a shared ``AnomalyDataModule`` base, plus the
synthetic-dataset writer used by tests and demos."""

from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.dataset import AnomalyDataset
from anomaly_bench.data.folder import Folder
from anomaly_bench.data.goodsad import GoodsAD
from anomaly_bench.data.io import DataError
from anomaly_bench.data.loco import MVTecLOCO
from anomaly_bench.data.mpdd import MPDD
from anomaly_bench.data.mvtec import MVTecAD
from anomaly_bench.data.synthetic import synth_main, write_dataset
from anomaly_bench.data.visa import VisA

__all__ = [
    "AnomalyDataModule", "AnomalyDataset", "DataError", "Folder", "GoodsAD", "MPDD", "MVTecAD",
    "MVTecLOCO", "VisA", "synth_main", "write_dataset",
]
