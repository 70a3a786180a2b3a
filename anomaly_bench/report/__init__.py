"""Self-contained HTML reports of a run or a grid: ``anomaly-bench report PATH``."""

from anomaly_bench.report.build import REPORT_FILE, build_report, report_main
from anomaly_bench.report.collect import ReportInputError
from anomaly_bench.report.grid_info import SYNTHETIC_MARKER

__all__ = ["REPORT_FILE", "SYNTHETIC_MARKER", "ReportInputError", "build_report", "report_main"]
