"""``anomaly-bench benchmark`` with the fake CLI, as its own process (tests signal and kill it):

    python -m tests.benchmark.run_grid --config G.yaml [--launcher ray --ray_address ...]
"""

import sys

from anomaly_bench.benchmark.cli import benchmark_main
from tests.benchmark.fake_commands import fake_command

if __name__ == "__main__":
    sys.exit(benchmark_main(sys.argv[1:], command_builder=fake_command))
