"""Memory of the write planner vs input size: peak RSS writing 10k, 100k and 1M generated records.

    python -m bench.memory

Each size runs in a fresh interpreter (so peaks do not mix), streaming generated records through
``WritePlanner`` (bulk upserts) into the emulator at time_scale 0. The planner holds at most
2 x concurrency chunks, so memory must not grow with the input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.cli import run_benchmark
from tests.devstack_process import ROOT, DevstackProcess, subprocess_env

SIZES = (10_000, 100_000, 1_000_000)
LIMIT_RATIO = 1.2  # peak RSS at 1M / at 10k

WORKER = """
import json, os, resource, uuid
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.planner import WritePlanner
from shared.composition import token_provider

count = int(os.environ["BENCH_RECORDS"])
options = ClientOptions(max_concurrency=4)
client = DataverseClient(os.environ["DATAVERSE_URL"], token_provider(), options=options)
prefix = uuid.uuid4().hex[:6]
records = (
    {"accountnumber": f"{prefix}{i}", "name": f"memory bench record {i}", "telephone1": str(i)}
    for i in range(count)
)
run = WritePlanner(client).write(
    "account", "accounts", records, "upsert", key=("accountnumber",), strategy="bulk", batch_size=1000
)
ok = sum(1 for r in run if r.ok)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"records": count, "ok": ok, "peak_rss_mib": peak_mib}))
"""


def measure(sizes: tuple[int, ...] = SIZES) -> dict[str, object]:
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", ROOT / ".devstack" / "bench-memory", "bench-memory",
        "--no-azurite", "--memory", "--time-scale", "0",
    )  # fmt: skip
    results = []
    try:
        for size in sizes:
            env = subprocess_env({**stack.app_settings(), "BENCH_RECORDS": str(size)})
            out = subprocess.run(
                [sys.executable, "-c", WORKER], env=env, cwd=ROOT, capture_output=True, text=True, check=True
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        stack.stop()
    ratio = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    return {"sizes": results, "ratio": ratio, "target_ratio": LIMIT_RATIO}


def main() -> None:
    run_benchmark(__doc__, lambda _: measure(), describe)


def describe(result: dict[str, object]) -> str:
    rows = [f"| {r['records']:,} | {r['ok']:,} | {r['peak_rss_mib']:.1f} |" for r in result["sizes"]]  # type: ignore[attr-defined]
    return "\n".join([
        f"Machine: {os.cpu_count()} CPUs", "| records | written | peak RSS (MiB) |", "|---|---|---|", *rows,
        f"\npeak RSS ratio 1M / 10k = {result['ratio']:.2f} (target <= {LIMIT_RATIO})",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
