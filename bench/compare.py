"""Two trees measured side by side: every benchmark of ``bench.report`` run for a base checkout and for this
one, alternating (base, this, this, base, ...) so that a machine getting busier or quieter affects both,
then the medians of the figures that matter compared as ratios.

    git worktree add /tmp/base <rev> && (cd /tmp/base && python -m shared.stamps)
    python -m bench.compare --base /tmp/base [--only coldstart cpu] [--json out.json]

A figure is worse when it moves the wrong way (a lower throughput fraction, a higher latency, CPU or
memory); ``--limit`` (default 5 %) says how much is tolerated, and the exit status is 1 when any figure
is worse by more. Each tree runs its own copy of the benchmarks, with this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import BENCHES

ROOT = Path(__file__).resolve().parents[1]
REPEATS = {"coldstart": 3, "cpu": 3, "calls": 2}  # the cheap ones; the others run once per tree
DEFAULT_LIMIT_PERCENT = 5.0

# figure name -> (what it reads from a benchmark's result, True when higher is better)
Figure = tuple[Callable[[dict[str, Any]], float], bool]
Runs = dict[str, dict[str, list[dict[str, Any]]]]  # benchmark -> "base"/"this" -> results


def _peer(name: str, field: str) -> Callable[[dict[str, Any]], float]:
    return lambda result: float(next(r[field] for r in result["runs"] if r["name"] == name))


def _strategy(strategy: str, concurrency: int) -> Callable[[dict[str, Any]], float]:
    def fraction(result: dict[str, Any]) -> float:
        rows = result["rows"]
        return float(next(r["fraction"] for r in rows if r["strategy"] == strategy and r["concurrency"] == concurrency))

    return fraction


FIGURES: dict[str, dict[str, Figure]] = {
    "coldstart": {"indexing / import azure.functions": (lambda r: float(r["ratio"]), False)},
    "cpu": {
        "client µs per record (bulk)": (lambda r: float(r["client_us"]["bulk"]), False),
        "client µs per record ($batch)": (lambda r: float(r["client_us"]["batch"]), False),
    },
    "calls": {
        "identity calls per 100 invocations": (
            lambda r: float(r["managed_identity_token_requests"] + r["key_vault_reads"] + r["entra_token_requests"]),
            False,
        )
    },
    "memory": {"peak RSS at 1M records / at 10k": (lambda r: float(r["ratio"]), False)},
    "webhooks": {"acknowledgement p99 ms": (lambda r: float(r["p99_ms"]), False)},
    "throughput": {
        f"{strategy} C={concurrency} fraction of the ceiling": (_strategy(strategy, concurrency), True)
        for strategy in ("single", "batch", "bulk")
        for concurrency in (1, 4)
    },
    "peers": {
        "sync end to end, fraction of the ceiling": (
            _peer("dvbridge sync end to end (CSV in Azurite, auto)", "fraction"),
            True,
        ),
        "write planner (auto), fraction of the ceiling": (_peer("dvbridge write planner (auto)", "fraction"), True),
        "production-like, fraction of the ceiling": (
            lambda r: float(r["production"]["runs"][0]["fraction"]),
            True,
        ),
    },
}


def run(tree: Path, name: str, args: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAVERSE_", "KEY_VAULT", "IDENTITY_"))}
    env["PYTHONPATH"] = str(tree)
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--json"],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"bench.{name} failed in {tree}:\n{completed.stderr[-3000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def compare(base: Path, only: list[str]) -> Runs:
    results: Runs = {}
    for name in only:
        args = BENCHES[name][0]
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
        for attempt in range(REPEATS.get(name, 1)):
            for label in ("base", "this") if attempt % 2 == 0 else ("this", "base"):
                runs[label].append(run(base if label == "base" else ROOT, name, args))
                print(f"{name}: {label} #{attempt + 1} done", file=sys.stderr, flush=True)
        results[name] = runs
    return results


def verdicts(results: Runs) -> list[tuple[str, float, float, float]]:
    """(figure, base median, this median, percent worse; negative is better)."""
    rows = []
    for name, runs in results.items():
        for figure, (read, higher_is_better) in FIGURES[name].items():
            before = statistics.median(read(r) for r in runs["base"])
            after = statistics.median(read(r) for r in runs["this"])
            change = (after - before) / before * 100 if before else 0.0
            rows.append((f"{name}: {figure}", before, after, -change if higher_is_better else change))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="a checkout of the revision to compare with")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="these benchmarks (default: all)")
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT_PERCENT, help="tolerated percent worse")
    parser.add_argument("--json", type=Path, help="also write every run's raw result here")
    args = parser.parse_args()
    results = compare(args.base.resolve(), args.only or list(BENCHES))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    rows = verdicts(results)
    print("| figure | base | this | worse by |\n|---|---|---|---|")
    for figure, before, after, worse in rows:
        print(f"| {figure} | {before:.4g} | {after:.4g} | {worse:+.1f} % |")
    sys.exit(1 if any(worse > args.limit for *_, worse in rows) else 0)


if __name__ == "__main__":
    main()
