"""Run every benchmark and write BENCHMARKS.md: machine, date, emulator configuration, commands, tables.

    python -m bench.report [--repeat 3] [--out BENCHMARKS.md]

Each benchmark runs in its own process (``python -m bench.<name> --json``), ``--repeat`` times where it
is cheap; every number in the tables is the median of those runs, and every ratio comes from figures
measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu_window import CPU_HEADER, cpu_cell, saturated_cell
from bench.throughput import (
    BATCH_OP_MS,
    BULK_FIXED_MS,
    BULK_PER_RECORD_MS,
    DOP,
    EXECUTION_MS_PER_WINDOW,
    LATENCY_MS,
    REQUESTS_PER_WINDOW,
    SINGLE_MS,
    TABLE_HEAD,
    WINDOW_S,
    retried_line,
    table_line,
)
from tests.devstack_process import ROOT, subprocess_env

# name -> (arguments, repeat it?)  Slow ones (whole-window throughput, 1M records) run once.
BENCHES: dict[str, tuple[list[str], bool]] = {
    "coldstart": (["--runs", "20"], True),
    "cpu": (["--records", "20000"], True),
    "calls": (["--invocations", "100"], True),
    "memory": ([], False),
    "webhooks": (["--count", "2000", "--rate", "100"], False),
    "throughput": (["--time-scale", "0.05", "--max-time-scale", "0.4", "--seconds", "30"], False),
    "peers": (["--records", "100000", "--sync-records", "100000", "--time-scale", "0.1"], False),
    "shared_budget": ([], False),
}


def run_bench(name: str, args: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--json"],
        cwd=ROOT, env=subprocess_env({}), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"bench.{name} failed:\n{completed.stderr[-3000:]}")
    result = dict(json.loads(completed.stdout.strip().splitlines()[-1]))
    result["_seconds"] = time.monotonic() - started
    return result


def median_of(runs: list[Any]) -> Any:
    """The element-wise median of equally shaped JSON results."""
    first = runs[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
        return first
    if isinstance(first, (int, float)):
        return statistics.median(runs)
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs]) for k in first if all(k in r for r in runs)}
    return [median_of([r[i] for r in runs]) for i in range(len(first))]


def render(results: dict[str, Any], repeat: int, elapsed_s: float, only: list[str] | None = None) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    written = (
        f"Updated by `python -m bench.report --only {' '.join(only)}` on {now}, in {elapsed_s / 60:.1f} min;"
        " the other sections come from the previous full `make bench`."
        if only
        else f"Written by `make bench` (`python -m bench.report --repeat {repeat}`) on {now},"
        f" in {elapsed_s / 60:.1f} min."
    )
    measured = ", ".join(f"{name} {results[name].get('_at', 'earlier')}" for name in BENCHES if name in results)
    cold, cpu, calls, memory = results["coldstart"], results["cpu"], results["calls"], results["memory"]
    hooks, tp = results["webhooks"], results["throughput"]
    lines = [
        "# Benchmarks",
        "",
        written,
        f"When each section was measured: {measured}.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        f"Numbers are medians of {repeat} runs where marked ×{repeat}; ratios compare figures from the same run.",
        "",
        "## Emulator configuration",
        "",
        "devstack's Dataverse (its default cost model and limits, `devstack/dataverse/limits.py`): per request"
        f" latency {LATENCY_MS:.0f} ms; single write {SINGLE_MS:.0f} ms; `$batch` {BATCH_OP_MS:.0f} ms per operation;"
        f" bulk {BULK_FIXED_MS:.0f} ms + {BULK_PER_RECORD_MS} ms per record. Service protection per user and"
        f" {WINDOW_S:.0f} s window: {REQUESTS_PER_WINDOW:,} requests, {EXECUTION_MS_PER_WINDOW / 1000:,.0f} s of"
        f" execution time, 52 concurrent requests; `x-ms-dop-hint` {DOP}. Rates are in model time (real rate"
        " × time scale), so they read like production numbers; the time scale is given per table.",
        "",
        "## Throughput of the write planner against the ceiling",
        "",
        *throughput_lines(tp),
        *shared_budget_lines(results.get("shared_budget")),
    ]
    lines += [
        "",
        f"## Identity calls per invocation (×{repeat})",
        "",
        f"`python -m bench.calls --invocations {calls['invocations']:.0f}` — warm sync invocations through the"
        " local host (`POST /api/sync/accounts/run`), counted by devstack.",
        "",
        "| invocations | managed-identity token requests | Key Vault reads of the credential | Entra token requests |",
        "|---|---|---|---|",
        f"| {calls['invocations']:.0f} | {calls['managed_identity_token_requests']:.0f} |"
        f" {calls['key_vault_reads']:.0f} | {calls['entra_token_requests']:.0f} |",
        "",
        f"## Cold start (×{repeat})",
        "",
        f"`python -m bench.coldstart --runs {cold['runs']:.0f}` — fresh processes, timed from start to exit.",
        "",
        "| `import azure.functions` | index `function_app` | ratio | target |",
        "|---|---|---|---|",
        f"| {cold['azure_functions_ms']:.0f} ms | {cold['indexing_ms']:.0f} ms | {cold['ratio']:.2f}× | ≤ 1.3× |",
        "",
        "## Memory",
        "",
        "`python -m bench.memory` — peak RSS of a fresh interpreter streaming generated records through the"
        " write planner (bulk upserts, emulator at time scale 0).",
        "",
        "| records | written | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    for size in memory["sizes"]:
        lines.append(f"| {size['records']:,.0f} | {size['ok']:,.0f} | {size['peak_rss_mib']:.1f} |")
    lines += [
        "",
        f"Peak RSS at 1M / at 10k: **{memory['ratio']:.2f}×** (target ≤ {memory['target_ratio']}×).",
        "",
        f"## CPU per record (×{repeat})",
        "",
        f"`python -m bench.cpu --records {cpu['records']:.0f}` — client process CPU only.",
        "",
        "| path | encode only (µs/record) | whole client: plan, encode, HTTP, TLS, decode (µs/record) |",
        "|---|---|---|",
        f"| bulk (UpsertMultiple × 1,000) | {cpu['encode_us']['bulk']:.1f} | {cpu['client_us']['bulk']:.1f} |",
        f"| `$batch` (× 50) | {cpu['encode_us']['batch']:.1f} | {cpu['client_us']['batch']:.1f} |",
        "",
        "## Webhook acknowledgement",
        "",
        f"`python -m bench.webhooks --count {hooks['count']:.0f} --rate {hooks['rate']:.0f}` — Dataverse deliveries"
        " sent open loop to the local host; latency from the scheduled send time; side by side with the host's"
        " liveness endpoint at the same rate.",
        "",
        "| acknowledged 202 | p50 | p95 | p99 | liveness p99 | processed exactly once | drained after last ack"
        f" | {CPU_HEADER}, while sending | saturated |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {hooks['acknowledged_202']:.0f}/{hooks['count']:.0f} | {hooks['p50_ms']:.0f} ms | {hooks['p95_ms']:.0f} ms"
        f" | {hooks['p99_ms']:.0f} ms | {hooks['floor_p99_ms']:.1f} ms | {hooks['processed_once']:.0f}"
        f" | {hooks['drain_s']:.1f} s | {cpu_cell(hooks.get('cpu'))} | {saturated_cell(hooks.get('cpu'))} |",
        "",
    ]
    lines += peers_tables(results["peers"]) if "peers" in results else []
    return "\n".join(lines)


def throughput_lines(tp: dict[str, Any]) -> list[str]:
    command = f"`python -m bench.throughput --time-scale {tp['time_scale']}"
    if "max_time_scale" in tp:
        command += f" --max-time-scale {tp['max_time_scale']}"
    lines = [
        f"{command} --seconds {tp['seconds']:.0f}` — account upserts by alternate key; the steady-state rate of"
        " the last service-protection window before the run's deadline. Each configuration runs at its own time"
        " scale (slow enough that its real record and request rates stay modest), one step slower again when its"
        " window was saturated; the window is shortened at larger scales, with the same per-second limits. CPU"
        " is over that window; how to read it: [docs/performance.md](docs/performance.md#cpu-and-saturation).",
        "",
        *TABLE_HEAD,
        *(table_line(row, tp["time_scale"]) for row in tp["rows"]),
    ]
    if tp.get("retried"):
        lines += ["", "Saturated, so run again one step slower:", ""]
        lines += [f"* {retried_line(row)}" for row in tp["retried"]]
    return lines


def shared_budget_lines(runs: dict[str, Any] | None) -> list[str]:
    if not runs:
        return []
    shared = runs["shared"]
    lines = [
        "",
        "## One budget for three hosts",
        "",
        f"`python -m bench.shared_budget` — the fan-out of `tests/e2e/test_shared_budget.py`: {shared['hosts']} local"
        f" hosts share one Azurite and one application user and take a {shared['rows']:,}-row sync fanned out to"
        f" work items, {shared['records_per_request']} records per `UpsertMultiple`, every host's own concurrency far"
        f" above the budget of {shared['budget']}; the emulator's request-count and execution-time limits opened wide,"
        " so the 52 requests in flight per user are the ceiling; time scale"
        f" {shared['time_scale']:g}. Steady: between the 10th and the 90th percentile of answers (the fan-out's start"
        " and its last work item's tail are the sync's, not the budget's).",
        "",
        "| hosts | concurrency 429s (`0x80072326`) | peak in flight | records/s (model) | ceiling | fraction, whole run"
        " | fraction, steady | rows written | real seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in (("sharing one budget", shared), ("each alone", runs["alone"])):
        lines.append(
            f"| {label} | {r['concurrency_429s']:.0f} | {r['peak_in_flight']:.0f} | {r['model_records_per_s']:.1f}"
            f" | {r['ceiling']:.1f} | {r['fraction']:.0%} | {r['steady_fraction']:.0%}"
            f" | {r['rows'] if r['status'] == 'succeeded' else r['status']} | {r['elapsed_s']:.1f} |"
        )
    return lines


def peers_tables(peers: dict[str, Any]) -> list[str]:
    by_name = {r["name"]: r for r in peers["runs"]}
    planner = by_name["dvbridge write planner (auto)"]["model_rate"]

    def ceiling_ratio(name: str) -> float:
        return float(by_name["dvbridge write planner (auto)"]["ceiling"]) / float(by_name[name]["ceiling"])

    def ratio(name: str) -> str:
        return f"{planner / by_name[name]['model_rate']:.1f}×" if by_name[name]["model_rate"] else "-"

    lines = [
        "## dvbridge against its peers",
        "",
        f"`python -m bench.peers --records {peers['records']} --sync-records {peers['sync_records']}"
        f" --time-scale {peers['time_scale']}` — one emulator, the same configuration for every client. Bulk paths"
        f" write {peers['records']:,} account upserts by alternate key ({peers['sync_records']:,} through the sync"
        f" engine), rate over the whole run;"
        f" request-bound paths run {peers['time_box_s']:.0f} s (two"
        " service-protection windows) and report the last window. Client CPU is this process's CPU time; PPDC's"
        " 429s are retried by the harness after `Retry-After`.",
        "",
        *PEER_HEAD,
        *(peer_line(r) for r in peers["runs"]),
    ]
    lines += [
        "",
        "dvbridge's write planner (auto) vs: PPDC as its README shows it"
        f" **{ratio('PPDC as its README shows it')}**, PPDC tuned **{ratio('PPDC tuned (async, dop hint)')}**,"
        f" the naive loop **{ratio('naive requests loop (PATCH)')}** (same run). On one web server the ceilings"
        f" themselves differ {ceiling_ratio('PPDC as its README shows it'):.1f}× (README: one request at a time) and"
        f" {ceiling_ratio('PPDC tuned (async, dop hint)'):.1f}× (tuned): no client can beat another by more;"
        " the production-like run below is where the clients differ.",
        "",
        "### Concurrency sweep (dvbridge, bulk × 1,000)",
        "",
        f"| concurrency | records/s (model) | ceiling | fraction | 429s | {CPU_HEADER} | saturated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in peers["sweep"]:
        lines.append(
            f"| {r['name'].rsplit('C=', 1)[-1]} | {r['model_rate']:.1f} | {r['ceiling']:.1f} | {r['fraction']:.0%}"
            f" | {r['throttles']} | {cpu_cell(r.get('cpu'))} | {saturated_cell(r.get('cpu'))} |"
        )
    return [*lines, "", *_production_lines(peers.get("production"))]


PEER_HEAD = [
    "| client | records | records/s (model) | ceiling | fraction | HTTP requests | 429s | client CPU (s)"
    f" | {CPU_HEADER} | saturated |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def peer_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['name']} | {r['records']:,} | {r['model_rate']:.1f} | {r['ceiling']:.1f} | {r['fraction']:.0%}"
        f" | {r['requests']:,} | {r['throttles']} | {r['cpu_s']:.1f} | {cpu_cell(r.get('cpu'))}"
        f" | {saturated_cell(r.get('cpu'))} |"
    )


def _production_lines(prod: dict[str, Any] | None) -> list[str]:
    if not prod:
        return []
    runs = {r["name"]: r for r in prod["runs"]}
    ours = runs["dvbridge write planner (auto, dop hint)"]["model_rate"]
    lines = [
        "### Production-like: two web servers, 1 % throttled",
        "",
        f"Same run, same emulator, reconfigured: {prod['web_servers']} web servers (so `x-ms-dop-hint` is"
        f" {prod['dop_hint']}), {prod['throttle_rate']:.0%} of `UpsertMultiple` requests answered 429"
        f" (`0x80072321`, `Retry-After: {prod['retry_after_s']}`), time scale {prod['time_scale']}. Limits apply per"
        " web server: dvbridge refuses the affinity cookie and spreads its requests; PPDC's sessions keep it and"
        " stay on one server (its URL is given by name, `localhost`, as in production, since aiohttp ignores"
        " cookies from IP-address hosts). The window is shortened to"
        f" {prod['window_s']:.0f} s with the same per-second limits so that each client runs two windows"
        f" ({prod['time_box_s']:.0f} s real) and is measured over the last. The ceiling is Dataverse's for the user:"
        f" {prod['web_servers']} servers × the per-server optimum.",
        "",
        *PEER_HEAD,
        *(peer_line(r) for r in prod["runs"]),
    ]
    peers = {name: r["model_rate"] for name, r in runs.items() if not name.startswith("dvbridge")}
    ratios = ", ".join(f"{name} **{ours / rate:.1f}×**" for name, rate in peers.items() if rate)
    return [*lines, "", f"dvbridge vs: {ratios} (same run).", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--only", nargs="*", help="rerun these; the others come from the last run's results")
    args = parser.parse_args()
    started = time.monotonic()
    saved = Path(args.out).with_suffix(".json")
    results: dict[str, Any] = json.loads(saved.read_text()) if args.only and saved.exists() else {}
    for name, (bench_args, repeatable) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        runs = [run_bench(name, bench_args) for _ in range(args.repeat if repeatable else 1)]
        results[name] = median_of(runs)
        results[name]["_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"{name}: {json.dumps(results[name])[:300]}", file=sys.stderr, flush=True)
    saved.write_text(json.dumps(results, indent=1) + "\n")  # the raw medians behind the tables
    Path(args.out).write_text(render(results, args.repeat, time.monotonic() - started, args.only))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
