"""CPU per record of the write path, in µs: the client process only (the emulator runs elsewhere).

    python -m bench.cpu [--records 20000]

Two measures for bulk (UpsertMultiple, 1,000 per request) and ``$batch`` (50 per request):

* **encode**: building the request bodies alone (the UpsertMultiple JSON; the multipart ``$batch`` codec),
  from records already mapped — the planning and encoding cost the target is about;
* **client**: ``time.process_time()`` of the whole ``WritePlanner.write`` against devstack at time scale 0
  (no modelled waits), so it adds HTTP, TLS and reply decoding — what a sync really pays per record.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from bench.cli import run_benchmark
from tests.devstack_process import ROOT, DevstackProcess

BULK_CHUNK = 1000
BATCH_CHUNK = 50
TARGET_US = 20.0


def records(count: int) -> list[dict[str, Any]]:
    prefix = uuid.uuid4().hex[:6]
    return [
        {"accountnumber": f"{prefix}{i}", "name": f"cpu bench record {i}", "telephone1": f"+44 20 7946 {i % 10000:04d}",
         "numberofemployees": i % 500, "creditonhold": False}
        for i in range(count)
    ]  # fmt: skip


def encode_us(rows: list[dict[str, Any]]) -> dict[str, float]:
    from shared.dataverse.batch_codec import Operation, encode_batch

    started = time.process_time()
    for start in range(0, len(rows), BULK_CHUNK):
        targets = [
            {"@odata.type": "Microsoft.Dynamics.CRM.account",
             "@odata.id": f"accounts(accountnumber='{r['accountnumber']}')",
             **{k: v for k, v in r.items() if k != "accountnumber"}}
            for r in rows[start : start + BULK_CHUNK]
        ]  # fmt: skip
        json.dumps({"Targets": targets}, separators=(",", ":")).encode()
    bulk = (time.process_time() - started) / len(rows) * 1e6
    started = time.process_time()
    for start in range(0, len(rows), BATCH_CHUNK):
        ops = [
            Operation("PATCH", f"/api/data/v9.2/accounts(accountnumber='{r['accountnumber']}')",
                      {k: v for k, v in r.items() if k != "accountnumber"})
            for r in rows[start : start + BATCH_CHUNK]
        ]  # fmt: skip
        encode_batch(ops)
    batch = (time.process_time() - started) / len(rows) * 1e6
    return {"bulk": bulk, "batch": batch}


def client_us(rows: list[dict[str, Any]], strategy: str, chunk: int) -> float:
    from shared.composition import token_provider
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.dataverse.planner import WritePlanner

    client = DataverseClient(os.environ["DATAVERSE_URL"], token_provider(), options=ClientOptions(max_concurrency=4))
    warm = WritePlanner(
        client
    ).write(  # token, connections, metadata
        "account", "accounts", rows[:chunk], "upsert", key=("accountnumber",), strategy=strategy, batch_size=chunk
    )
    sum(1 for _ in warm)
    fresh = [{**r, "accountnumber": f"x{r['accountnumber']}"} for r in rows]
    started = time.process_time()
    run = WritePlanner(client).write(
        "account", "accounts", fresh, "upsert", key=("accountnumber",), strategy=strategy, batch_size=chunk
    )
    ok = sum(1 for r in run if r.ok)
    spent = time.process_time() - started
    if ok != len(fresh):
        raise RuntimeError(f"{strategy}: {len(fresh) - ok} records failed")
    return spent / len(fresh) * 1e6


def measure(count: int) -> dict[str, Any]:
    rows = records(count)
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", ROOT / ".devstack" / "bench-cpu", "bench-cpu",
        "--no-azurite", "--memory", "--time-scale", "0",
    )  # fmt: skip
    os.environ.update(stack.app_settings())
    try:
        encode = encode_us(rows)
        client = {
            "bulk": client_us(rows, "bulk", BULK_CHUNK),
            "batch": client_us(rows[: count // 4], "batch", BATCH_CHUNK),
        }
    finally:
        stack.stop()
    return {"records": count, "encode_us": encode, "client_us": client, "target_us": TARGET_US}


def main() -> None:
    run_benchmark(
        __doc__, lambda args: measure(args.records), describe, {"--records": {"type": int, "default": 20_000}}
    )


def describe(result: dict[str, Any]) -> str:
    return "\n".join(
        f"{kind:<5}: encode {result['encode_us'][kind]:6.1f} µs/record, whole client"
        f" {result['client_us'][kind]:6.1f} µs/record (target <= {TARGET_US:.0f} µs for planning and encoding)"
        for kind in ("bulk", "batch")
    )


if __name__ == "__main__":
    main()
