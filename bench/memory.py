"""Memory of the write planner vs input size: peak RSS writing 200k generated records vs 20k.

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

from tests.devstack_process import ROOT, DevstackProcess, subprocess_env

SIZES = (20_000, 200_000)
LIMIT_RATIO = 1.3

WORKER = """
import json, os, resource, uuid
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.planner import WritePlanner
from shared.identity.worker import token_provider

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


def main() -> None:
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", ROOT / ".devstack" / "bench-memory", "bench-memory",
        "--no-azurite", "--memory", "--time-scale", "0",
    )  # fmt: skip
    results = []
    try:
        for size in SIZES:
            env = subprocess_env({**stack.app_settings(), "BENCH_RECORDS": str(size)})
            out = subprocess.run(
                [sys.executable, "-c", WORKER], env=env, cwd=ROOT, capture_output=True, text=True, check=True
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    finally:
        stack.stop()
    small, large = results
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print()
    print(f"Machine: {os.cpu_count()} CPUs")
    print("| records | written | peak RSS (MiB) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['records']:,} | {r['ok']:,} | {r['peak_rss_mib']:.1f} |")
    print(f"\npeak RSS ratio 200k / 20k = {ratio:.2f} (target <= {LIMIT_RATIO})")
    if ratio > LIMIT_RATIO or any(r["ok"] != r["records"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
