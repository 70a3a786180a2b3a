"""``python -m anomaly_bench`` is the same as ``anomaly-bench``."""

import sys

from anomaly_bench.cli import main

sys.exit(main())
