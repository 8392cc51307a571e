"""One Dataverse budget for three hosts: the fan-out of ``tests/e2e/test_shared_budget.py``, run as a benchmark.

    python -m bench.shared_budget [--json]

Three local hosts (each with its worker) share one Azurite and one application user and take a fanned-out
sync of 100,000 rows, every host's own concurrency far above the budget: once with the shared budget, once
with each host alone. The test is the benchmark (the same scenario, asserted there), so this runs it and
reports the figures it records: concurrency 429s (``0x80072326``), the most requests in flight at once,
and the rate as a fraction of the one user's ceiling, over the whole run and over its steady middle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.cli import run_benchmark
from tests.devstack_process import ROOT, subprocess_env

TEST = "tests/e2e/test_shared_budget.py::test_three_hosts_take_a_100k_fan_out_within_one_users_concurrency_limit"
SAME_ROWS_SWITCHED_OFF = {"SHARED_BUDGET_ROWS_SWITCHED_OFF": "100000"}  # the test's default is smaller
RUNS = {"shared": "fan-out, shared budget", "alone": "fan-out, each host alone"}


def measure(_: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "shared-budget.json"
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider", "-o", "log_level=WARNING"],
            cwd=ROOT, env=subprocess_env({"SHARED_BUDGET_RESULTS": str(results), **SAME_ROWS_SWITCHED_OFF}),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if completed.returncode != 0:
            raise SystemExit(f"the shared-budget test failed:\n{completed.stdout[-3000:]}")
        figures = json.loads(results.read_text())
    return {key: figures[name] for key, name in RUNS.items()}


def describe(result: dict[str, Any]) -> str:
    return "\n".join(
        f"{key:<7} concurrency 429s {r['concurrency_429s']:>4}, peak in flight {r['peak_in_flight']},"
        f" {r['fraction']:.1%} of the ceiling over the run, {r['steady_fraction']:.1%} steady, {r['elapsed_s']} s"
        for key, r in result.items()
    )


if __name__ == "__main__":
    run_benchmark(__doc__, measure, describe)
