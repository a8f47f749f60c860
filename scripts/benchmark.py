"""Benchmark a config: python scripts/benchmark.py --config=configs/experiment/baseline.yaml [--steps=N].

Prints the measurements as JSON and writes them to --out (see docs/performance.md).
"""

import time

STARTED = time.perf_counter()  # time to first step counts from here, imports included

import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.experiments.cli import benchmark_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(functools.partial(benchmark_main, started=STARTED)))
