"""Synthetic datasets in the exact layouts of MVTec AD, MPDD, VisA (raw and prepared), GoodsAD and
MVTec LOCO, for tests and demos (the real data cannot be downloaded or committed)."""

from anomaly_bench.data.synthetic.cli import synth_main
from anomaly_bench.data.synthetic.writer import LAYOUT_OF_DATAMODULE, LAYOUTS, SynthSummary, write_dataset

__all__ = ["LAYOUT_OF_DATAMODULE", "LAYOUTS", "SynthSummary", "synth_main", "write_dataset"]
