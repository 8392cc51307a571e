"""bench.compare's verdicts: a figure that moves the wrong way is reported worse by its share, one that moves
the right way is not, whichever direction is the right one for it."""

from __future__ import annotations

from typing import Any

import pytest

from bench.compare import verdicts

pytestmark = pytest.mark.unit


def throughput(fraction: float) -> dict[str, Any]:
    return {"rows": [{"strategy": s, "concurrency": c, "fraction": fraction} for s in ("single", "batch", "bulk")
                     for c in (1, 4)]}  # fmt: skip


def test_a_lower_throughput_and_a_slower_cold_start_are_worse_a_faster_one_is_not() -> None:
    rows = verdicts({
        "throughput": {"base": [throughput(0.9)], "this": [throughput(0.81)]},
        "coldstart": {"base": [{"ratio": 1.2}, {"ratio": 1.0}, {"ratio": 1.1}], "this": [{"ratio": 1.21}] * 3},
        "webhooks": {"base": [{"p99_ms": 100.0}], "this": [{"p99_ms": 50.0}]},
    })  # fmt: skip
    worse = {figure: round(change, 1) for figure, _, _, change in rows}
    assert worse["throughput: bulk C=4 fraction of the ceiling"] == 10.0
    assert worse["coldstart: indexing / import azure.functions"] == 10.0  # against the median of the base runs
    assert worse["webhooks: acknowledgement p99 ms"] == -50.0
