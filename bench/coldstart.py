"""Cold start: indexing ``function_app.py`` vs importing ``azure.functions`` alone, in fresh processes.

    python -m bench.coldstart [--runs 20]

The Python worker imports ``function_app`` and calls ``get_functions()`` once when an instance starts;
everything heavy (SDKs, requests, pydantic models of the jobs file) must load lazily, on first use. Each
sample is a fresh interpreter timed from the parent (process start to exit), alternating the two kinds
so that machine noise hits both alike; medians and their ratio are reported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.cli import run_benchmark
from tests.devstack_process import ROOT, subprocess_env

BASELINE = "import azure.functions"
INDEXING = "import function_app; function_app.app.get_functions()"
TARGET_RATIO = 1.3


def sample(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env({}), check=True)
    return time.perf_counter() - started


def measure(runs: int) -> dict[str, float]:
    sample(INDEXING)  # warm the page cache and .pyc files once
    baseline, indexing = [], []
    for _ in range(runs):
        baseline.append(sample(BASELINE))
        indexing.append(sample(INDEXING))
    base_ms, index_ms = statistics.median(baseline) * 1000, statistics.median(indexing) * 1000
    return {"runs": runs, "azure_functions_ms": base_ms, "indexing_ms": index_ms, "ratio": index_ms / base_ms}


def main() -> None:
    run_benchmark(__doc__, lambda args: measure(args.runs), describe, {"--runs": {"type": int, "default": 20}})


def describe(result: dict[str, float]) -> str:
    return (
        f"{result['runs']:.0f} fresh processes each: import azure.functions {result['azure_functions_ms']:.0f} ms,"
        f" index function_app {result['indexing_ms']:.0f} ms (medians) -> {result['ratio']:.2f}x"
        f" (target <= {TARGET_RATIO}x)"
    )


if __name__ == "__main__":
    main()
