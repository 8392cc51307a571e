"""Throughput of the write planner against the emulator, compared with the ceiling the emulator's own
configuration implies (the lowest of what the concurrency delivers, the request-count limit and the
execution-time limit; see :meth:`Config.ceiling`).

    python -m bench.throughput [--time-scale 0.05] [--max-time-scale 0.4] [--seconds 30] [--only bulk:4]

For each strategy (single, $batch, bulk) at concurrency 1 and at the dop hint, upserts accounts by
alternate key for a few service-protection windows and reports the steady-state rate (the last window),
the ceiling, and the fraction achieved. All rates are in model records/s (real rate x time_scale), so
they read like production numbers.

The fraction is only the client's when the machine was not the limit, so every row also records the CPU
the client, devstack and everything else on the machine used over its last window (``bench.cpu_window``)
and whether that window was saturated. Each configuration picks its own time scale: the emulator's
modelled times are real times x time_scale, so a larger scale means fewer real records and requests per
second for the same model rate, and the client's and emulator's own real overhead per request weighs less
in model time. A configuration starts at the smallest scale of the ladder ``--time-scale`` x 2^k that keeps
its real rates modest (see :func:`first_time_scale`) and, when its window was saturated anyway (another
workload, a slower machine), runs again one step slower, up to ``--max-time-scale``. The time scale is
changed at run time through the emulator's control endpoint; so that a slower scale does not make the run
longer, the service-protection window is shortened with it, with the same per-second limits (the ceiling
depends only on those rates), as long as the window still holds enough requests to measure.
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
from typing import Any

from bench.cpu_window import CPU_HEADER, CpuSampler, CpuWindow, cpu_cell, saturated_cell
from tests.dataverse_api import DataverseApi, api_for
from tests.devstack_process import ROOT, DevstackProcess

# The emulator's default cost model and limits: every figure below comes from devstack/dataverse/limits.py.
LATENCY_MS, SINGLE_MS, BATCH_OP_MS, BULK_FIXED_MS, BULK_PER_RECORD_MS = 40.0, 80.0, 80.0, 100.0, 6.5
REQUESTS_PER_WINDOW, EXECUTION_MS_PER_WINDOW, WINDOW_S, DOP = 6000, 1_200_000.0, 300.0, 4

BASE_TIME_SCALE = 0.05
MAX_TIME_SCALE = 0.4
TIME_SCALE_STEP = 2  # each rung of the ladder is this many times slower in real time than the one before
# A re-run at a slower scale may last at most this many times --seconds: where the window cannot shrink with
# the scale (too few requests would be left in it), each step doubles the run, and past this the row is
# reported as it was, marked saturated, rather than holding up the benchmark.
MAX_RUN_FACTOR = 4.0
# A configuration's first rung keeps the real load below these. Records: the emulator parses, validates and
# stores every record in one Python process, and the client encodes it in another, so the real record rate
# is what fills a core; requests: each costs both processes a TLS round trip and a parse however few records
# it carries.
REAL_RECORDS_PER_S_BUDGET = 4000.0
REAL_REQUESTS_PER_S_BUDGET = 150.0
# The real seconds a request's modelled time (latency + server time) should last at least: this much per
# request, plus this much per record it carries. The client's and the emulator's own work on a request
# outside its modelled time (HTTP, TLS, encoding and decoding every record, the GIL passing between threads)
# is real time that the time scale does not shrink, so in model time it is multiplied by 1 / time_scale.
# Next to a request that lasts long in real time it stays a small share of the fraction, and a slower or
# busier machine moves the fraction little.
MIN_REAL_S_PER_REQUEST = 0.02
MIN_REAL_S_PER_RECORD = 0.0005
# The last window must hold this many requests at the ceiling: completions arrive a request at a time (a bulk
# request's 1,000 records land at once), so a window of few requests measures its rate coarsely.
MIN_REQUESTS_PER_WINDOW = 40
# Service-protection windows per run: the rate is the last one's, after the first has filled the sliding
# window the limits count over (until then a client can burst above the per-second limits).
WINDOWS_PER_RUN = 2


@dataclass
class Config:
    strategy: str
    batch: int
    concurrency: int

    @property
    def server_ms(self) -> float:
        if self.strategy == "single":
            return SINGLE_MS
        if self.strategy == "batch":
            return BATCH_OP_MS * self.batch
        return BULK_FIXED_MS + BULK_PER_RECORD_MS * self.batch

    def ceiling(self) -> float:
        """Model records/s: min(what the concurrency delivers, request-count limit, execution-time limit)."""
        per_second = (
            self.concurrency / ((self.server_ms + LATENCY_MS) / 1000),
            REQUESTS_PER_WINDOW / WINDOW_S,
            (EXECUTION_MS_PER_WINDOW / WINDOW_S) / self.server_ms,
        )
        return min(per_second) * self.batch

    @property
    def name(self) -> str:
        return f"{self.strategy}:{self.concurrency}"


CONFIGS = [
    Config("single", 1, 1),
    Config("single", 1, DOP),
    Config("batch", 50, 1),
    Config("batch", 50, DOP),
    Config("bulk", 1000, 1),
    Config("bulk", 1000, DOP),
]


def ladder(base: float, top: float) -> list[float]:
    """The time scales a configuration may run at: base, base x step, ... up to ``top``."""
    scales = [base]
    while scales[-1] * TIME_SCALE_STEP <= top * (1 + 1e-9):
        scales.append(scales[-1] * TIME_SCALE_STEP)
    return scales


def first_time_scale(config: Config, scales: list[float]) -> float:
    """The smallest scale at which the configuration, running at its ceiling, stays within the real-load
    budgets and each request lasts long enough in real time; the largest if none does."""
    records_per_s = config.ceiling()
    for scale in scales:
        if (
            records_per_s / scale <= REAL_RECORDS_PER_S_BUDGET
            and records_per_s / config.batch / scale <= REAL_REQUESTS_PER_S_BUDGET
            and (LATENCY_MS + config.server_ms) / 1000 * scale
            >= MIN_REAL_S_PER_REQUEST + MIN_REAL_S_PER_RECORD * config.batch
        ):
            return scale
    return scales[-1]


def window_for(config: Config, time_scale: float, seconds: float) -> float:
    """The service-protection window (model seconds) for a run of ``seconds`` at ``time_scale``: the full
    window, halved while it lasts longer in real time than a run's share of ``seconds`` allows, but never to
    fewer than :data:`MIN_REQUESTS_PER_WINDOW` requests at the ceiling. Halving keeps the per-window limits
    whole numbers."""
    requests_per_s = config.ceiling() / config.batch
    window = WINDOW_S
    while window * time_scale > seconds / WINDOWS_PER_RUN and window / 2 * requests_per_s >= MIN_REQUESTS_PER_WINDOW:
        window /= 2
    return window


def run_seconds(config: Config, time_scale: float, seconds: float) -> float:
    """Real seconds to run at ``time_scale``: ``seconds``, or longer where the window could not shrink enough
    for :data:`WINDOWS_PER_RUN` of them to fit."""
    return max(seconds, WINDOWS_PER_RUN * window_for(config, time_scale, seconds) * time_scale)


def limits(time_scale: float, window_s: float) -> dict[str, Any]:
    """The emulator's limits for one run: the default per-second rates over a window of ``window_s``."""
    share = window_s / WINDOW_S
    return {
        "time_scale": time_scale,
        "window_s": window_s,
        "requests_per_window": round(REQUESTS_PER_WINDOW * share),
        "execution_ms_per_window": EXECUTION_MS_PER_WINDOW * share,
    }


@dataclass
class Row:
    config: Config
    time_scale: float
    window_s: float  # model seconds
    real_s: float  # real seconds the configuration ran
    rate: float  # model records/s over the last window
    throttles: int
    failed: int
    cpu: CpuWindow

    @property
    def ceiling(self) -> float:
        return self.config.ceiling()

    @property
    def fraction(self) -> float:
        return self.rate / self.ceiling

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {"strategy": c.strategy, "batch": c.batch, "concurrency": c.concurrency, "time_scale": self.time_scale,
                "window_s": self.window_s, "real_s": self.real_s, "rate": self.rate, "ceiling": self.ceiling,
                "fraction": self.fraction, "throttles": self.throttles, "failed": self.failed,
                "saturated": self.cpu.saturated, "cpu": self.cpu.as_dict()}  # fmt: skip

    def line(self) -> str:
        c = self.config
        return (
            f"{c.strategy:<6} x{c.batch:<4} C={c.concurrency} at time scale {self.time_scale:g}"
            f" (window {self.window_s:g} s): {self.rate:8.1f} rec/s (model), ceiling {self.ceiling:8.1f},"
            f" {self.fraction:6.1%}, 429s {self.throttles}, failed {self.failed}; {self.cpu.summary()}"
        )


def run(stack: DevstackProcess, api: DataverseApi, config: Config, time_scale: float, window_s: float,
        real_s: float) -> Row:  # fmt: skip
    from shared.composition import token_provider
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.dataverse.planner import WritePlanner

    api.control({"reset_windows": True, "limits": limits(time_scale, window_s)})
    client = DataverseClient(
        stack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(max_concurrency=config.concurrency, verify=stack.env["REQUESTS_CA_BUNDLE"]),
    )
    planner = WritePlanner(client)
    prefix = uuid.uuid4().hex[:6]
    started = time.monotonic()
    deadline = started + real_s
    done: list[float] = []

    def records() -> Iterator[dict[str, str]]:
        i = 0
        while time.monotonic() < deadline:
            yield {"accountnumber": f"{prefix}{i}", "name": f"bench {i}"}
            i += 1

    failed = 0
    with CpuSampler(stack.proc.pid) as cpu:
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
            if result.status == "failed":
                failed += 1
            else:
                done.append(time.monotonic())
    # The last window before the deadline: up to it the planner keeps every slot busy, after it the requests
    # in flight drain with none behind them. A window with fixed ends counts as many requests on average as
    # it holds; one that ends on a completion would always count that request in full.
    window_real = window_s * time_scale
    steady = sum(1 for t in done if deadline - window_real <= t < deadline)
    return Row(config, time_scale, window_s, time.monotonic() - started, steady / window_real * time_scale,
               client.governor.throttles, failed, cpu.window(deadline - window_real, deadline))  # fmt: skip


def measure(
    stack: DevstackProcess, configs: list[Config], base: float, top: float, seconds: float
) -> tuple[list[Row], list[Row]]:
    """(the reported rows, the saturated attempts that were run again at a slower scale)."""
    api = api_for(stack)
    scales = ladder(base, top)
    rows: list[Row] = []
    retried: list[Row] = []
    for config in configs:
        scale = first_time_scale(config, scales)
        while True:
            real_s = run_seconds(config, scale, seconds)
            row = run(stack, api, config, scale, window_for(config, scale, seconds), real_s)
            print(row.line(), file=sys.stderr, flush=True)
            affordable = MAX_RUN_FACTOR * seconds
            slower = [s for s in scales if s > scale and run_seconds(config, s, seconds) <= affordable]
            if not row.cpu.saturated or not slower:
                break
            retried.append(row)
            scale = slower[0]
        rows.append(row)
    return rows, retried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=BASE_TIME_SCALE, help="the smallest (fastest) scale")
    parser.add_argument("--max-time-scale", type=float, default=MAX_TIME_SCALE, help="the largest a re-run may use")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="real seconds per configuration (more if two windows need it)"
    )
    parser.add_argument("--only", nargs="*", help="configurations as strategy:concurrency, e.g. bulk:4")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for bench.report)")
    args = parser.parse_args()
    configs = [c for c in CONFIGS if not args.only or c.name in args.only]
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
    try:
        rows, retried = measure(stack, configs, args.time_scale, args.max_time_scale, args.seconds)
    finally:
        stack.stop()
    if args.json:
        print(json.dumps({"time_scale": args.time_scale, "max_time_scale": args.max_time_scale,
                          "seconds": args.seconds, "cpus": os.cpu_count(), "rows": [r.as_dict() for r in rows],
                          "retried": [r.as_dict() for r in retried]}))  # fmt: skip
        return
    print()
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; emulator time scales from {args.time_scale}"
        f" to {args.max_time_scale}"
    )
    print()
    print(markdown(rows, retried))


TABLE_HEAD = [
    "| strategy | records/request | concurrency | time scale | records/s (model) | ceiling | fraction | 429s | failed"
    f" | {CPU_HEADER} | saturated |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def table_line(row: dict[str, Any], time_scale: float | None = None) -> str:
    """One row of the table; ``time_scale`` stands in for a row recorded before each row had its own."""
    scale = row.get("time_scale", time_scale)
    return (
        f"| {row['strategy']} | {row['batch']} | {row['concurrency']} | {scale:g} | {row['rate']:.1f}"
        f" | {row['ceiling']:.1f} | {row['fraction']:.0%} | {row['throttles']} | {row['failed']}"
        f" | {cpu_cell(row.get('cpu'))} | {saturated_cell(row.get('cpu'))} |"
    )


def retried_line(row: dict[str, Any]) -> str:
    return (
        f"{row['strategy']} C={row['concurrency']} at time scale {row['time_scale']:g}: {row['fraction']:.0%} of the"
        f" ceiling, {saturated_cell(row['cpu'])} ({cpu_cell(row['cpu'])})"
    )


def markdown(rows: list[Row], retried: list[Row]) -> str:
    lines = [*TABLE_HEAD, *(table_line(r.as_dict()) for r in rows)]
    if retried:
        lines += ["", "Run again one step slower, after a saturated window:", ""]
        lines += [f"* {retried_line(r.as_dict())}" for r in retried]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
