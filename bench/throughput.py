"""Throughput of the write planner against the emulator, compared with the ceiling the emulator's own
configuration implies (the lowest of what the concurrency delivers, the request-count limit and the
execution-time limit; see :meth:`Config.ceiling`).

    python -m bench.throughput [--time-scale 0.05] [--seconds 30]

For each strategy (single, $batch, bulk) at concurrency 1 and at the dop hint, upserts accounts by
alternate key for a few service-protection windows and reports the steady-state rate (the last window),
the ceiling, and the fraction achieved. All rates are in model records/s (real rate x time_scale), so
they read like production numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

# The emulator's default cost model and limits: every figure below comes from devstack/dataverse/limits.py.
LATENCY_MS, SINGLE_MS, BATCH_OP_MS, BULK_FIXED_MS, BULK_PER_RECORD_MS = 40.0, 80.0, 80.0, 100.0, 6.5
REQUESTS_PER_WINDOW, EXECUTION_MS_PER_WINDOW, WINDOW_S, DOP = 6000, 1_200_000.0, 300.0, 4


@dataclass
class Config:
    strategy: str
    batch: int
    concurrency: int

    def ceiling(self) -> float:
        """Model records/s: min(what the concurrency delivers, request-count limit, execution-time limit)."""
        if self.strategy == "single":
            server_ms = SINGLE_MS
        elif self.strategy == "batch":
            server_ms = BATCH_OP_MS * self.batch
        else:
            server_ms = BULK_FIXED_MS + BULK_PER_RECORD_MS * self.batch
        per_second = (
            self.concurrency / ((server_ms + LATENCY_MS) / 1000),
            REQUESTS_PER_WINDOW / WINDOW_S,
            (EXECUTION_MS_PER_WINDOW / WINDOW_S) / server_ms,
        )
        return min(per_second) * self.batch


CONFIGS = [
    Config("single", 1, 1),
    Config("single", 1, DOP),
    Config("batch", 50, 1),
    Config("batch", 50, DOP),
    Config("bulk", 1000, 1),
    Config("bulk", 1000, DOP),
]


def run(stack: DevstackProcess, config: Config, seconds: float, time_scale: float) -> tuple[float, int, int]:
    from shared.composition import token_provider
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.dataverse.planner import WritePlanner

    api = api_for(stack)
    api.control({"reset_windows": True})
    client = DataverseClient(
        stack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(max_concurrency=config.concurrency, verify=stack.env["REQUESTS_CA_BUNDLE"]),
    )
    planner = WritePlanner(client)
    prefix = uuid.uuid4().hex[:6]
    deadline = time.monotonic() + seconds
    done: list[float] = []

    def records() -> Iterator[dict[str, str]]:
        i = 0
        while time.monotonic() < deadline:
            yield {"accountnumber": f"{prefix}{i}", "name": f"bench {i}"}
            i += 1

    failed = 0
    for result in planner.write(
        "account",
        "accounts",
        records(),
        "upsert",
        key=("accountnumber",),
        strategy=config.strategy,
        batch_size=config.batch,
        max_concurrency=config.concurrency,
    ):
        done.append(time.monotonic())
        failed += result.status == "failed"
    window_real = WINDOW_S * time_scale
    end = done[-1] if done else time.monotonic()
    steady = [t for t in done if t >= end - window_real]
    real_rate = len(steady) / window_real
    return real_rate * time_scale, client.governor.throttles, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=40.0, help="real seconds per configuration (>= 2 windows)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for bench.report)")
    args = parser.parse_args()
    state = ROOT / ".devstack" / "bench"
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        state,
        "bench",
        "--no-azurite",
        "--memory",
        "--time-scale",
        str(args.time_scale),
    )
    os.environ.update(stack.app_settings())
    rows = []
    try:
        for config in CONFIGS:
            rate, throttles, failed = run(stack, config, args.seconds, args.time_scale)
            ceiling = config.ceiling()
            rows.append((config, rate, ceiling, throttles, failed))
            print(
                f"{config.strategy:<6} x{config.batch:<4} C={config.concurrency}: {rate:8.1f} rec/s (model),"
                f" ceiling {ceiling:8.1f}, {rate / ceiling:6.1%}, 429s {throttles}, failed {failed}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        stack.stop()
    if args.json:
        print(json.dumps({"time_scale": args.time_scale, "seconds": args.seconds, "rows": [
            {"strategy": c.strategy, "batch": c.batch, "concurrency": c.concurrency, "rate": rate, "ceiling": ceiling,
             "fraction": rate / ceiling, "throttles": throttles, "failed": failed}
            for c, rate, ceiling, throttles, failed in rows
        ]}))  # fmt: skip
        return
    print()
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; emulator time_scale {args.time_scale};"
        f" window {WINDOW_S * args.time_scale:.0f} s real"
    )
    print()
    print("| strategy | records/request | concurrency | records/s (model) | ceiling | fraction | 429s | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for config, rate, ceiling, throttles, failed in rows:
        print(
            f"| {config.strategy} | {config.batch} | {config.concurrency} | {rate:.1f} | {ceiling:.1f}"
            f" | {rate / ceiling:.0%} | {throttles} | {failed} |"
        )


if __name__ == "__main__":
    main()
