"""Datasets: one module per on-disk layout on a shared ``AnomalyDataModule`` base, plus the
synthetic-dataset writer used by tests and demos. Imports are lazy (see ``anomaly_bench._lazy``)."""

from anomaly_bench._lazy import lazy_exports

# datamodule class name -> module; the CLI registers each of them (``--data MVTecAD``)
DATAMODULES: dict[str, str] = {
    "MVTecAD": "anomaly_bench.data.mvtec",
    "VisA": "anomaly_bench.data.visa",
    "GoodsAD": "anomaly_bench.data.goodsad",
    "MVTecLOCO": "anomaly_bench.data.loco",
    "MPDD": "anomaly_bench.data.mpdd",
    "Folder": "anomaly_bench.data.folder",
}

__getattr__, __dir__ = lazy_exports(__name__, {
    **DATAMODULES,
    "AnomalyDataModule": "anomaly_bench.data.datamodule",
    "AnomalyDataset": "anomaly_bench.data.dataset",
    "DataError": "anomaly_bench.data.io",
    "synth_main": "anomaly_bench.data.synthetic",
    "write_dataset": "anomaly_bench.data.synthetic",
})
__all__ = ["AnomalyDataModule", "AnomalyDataset", "DATAMODULES", "DataError", "synth_main", "write_dataset",
           *DATAMODULES]
