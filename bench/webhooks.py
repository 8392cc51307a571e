"""Webhook acknowledgement latency under a steady delivery rate, against the local Functions host.

    python -m bench.webhooks [--count 2000] [--rate 100]

Sends ``--count`` Dataverse deliveries (RemoteExecutionContexts for account Creates, built by the emulator's
own serializer) open-loop at ``--rate`` per second to ``POST /api/webhooks/dataverse``, then waits until
the queue processor has written every event's blob. Side by side in the same run and at the same rate, it
sends as many requests to the host's liveness endpoint: the receiver's overhead is reported as the ratio
of the two p99s, so the figure does not depend on how fast this machine is.

Latency is measured from each request's *scheduled* send time, so a backlog in the sender counts against
the receiver rather than hiding (no coordinated omission).
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import yaml

from bench.cpu_window import CpuSampler
from tests.devstack_process import ROOT, DevstackProcess

SENDER_THREADS = 32  # enough to keep 100/s flowing while some acknowledgements are slow
EVENT_CONTAINER = "webhook-events"
DRAIN_TIMEOUT_S = 300


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0

    def summary(self) -> str:
        return (
            f"p50 {self.percentile(50):6.1f} ms, p95 {self.percentile(95):6.1f} ms,"
            f" p99 {self.percentile(99):6.1f} ms, max {max(self.latencies_ms, default=0):6.1f} ms,"
            f" {len(self.latencies_ms) / self.elapsed_s:5.1f} req/s, statuses {dict(self.statuses)}"
        )


def account_creates(count: int) -> tuple[list[bytes], set[str]]:
    """``count`` deliveries as the emulator sends them for account Creates, and the record ids."""
    from devstack.dataverse.metadata import load_tables
    from devstack.dataverse.store import ChangeEvent, Record
    from devstack.dataverse.webhooks import OrgInfo, Registration, remote_execution_context

    scenario = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    account = load_tables(scenario["dataverse"]["tables"])["account"]
    org = OrgInfo("unqdevstack.crm.dynamics.com", str(uuid.uuid4()), str(uuid.uuid4()))
    registration = Registration(url="-", table="account", messages=["Create"])
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    bodies, ids = [], set()
    for i in range(count):
        record_id = str(uuid.uuid4())
        data = {
            "accountid": record_id, "name": f"Load {i} Ltd", "accountnumber": f"L{i:06d}",
            "telephone1": "+44 20 7946 0000", "numberofemployees": 40 + i % 500, "revenue": 125000.5,
            "creditonhold": False, "accountcategorycode": 1 + i % 2, "lastonholdtime": now,
        }  # fmt: skip
        record = Record("account", record_id, 1, data, now, now)
        context = remote_execution_context(
            ChangeEvent("Create", record, None, data), account, registration, org, str(uuid.uuid4()), str(uuid.uuid4())
        )
        bodies.append(json.dumps(context).replace("/", "\\/").encode())  # Dataverse escapes slashes
        ids.add(record_id)
    return bodies, ids


def send_at_rate(
    send: Callable[[requests.Session, int], int], count: int, rate_per_s: float, *, threads: int = SENDER_THREADS
) -> LoadResult:
    """Call ``send(session, i)`` for i in range(count), the i-th at start + i/rate (open loop)."""
    result = LoadResult()
    lock = threading.Lock()
    local = threading.local()
    start = time.monotonic() + 0.2

    def one(i: int) -> None:
        scheduled = start + i / rate_per_s
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            status = send(session, i)
        except requests.RequestException:
            status = 0
        latency_ms = (time.monotonic() - scheduled) * 1000
        with lock:
            result.statuses[status] += 1
            result.latencies_ms.append(latency_ms)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    result.elapsed_s = time.monotonic() - start
    return result


def dataverse_sender(stack: DevstackProcess, bodies: list[bytes]) -> Callable[[requests.Session, int], int]:
    keys = json.loads((stack.directory / "host-keys.json").read_text())
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/dataverse"
    headers = {
        "Content-Type": "application/json",
        "x-functions-key": keys["functions"]["dataverse_webhook"]["default"],
        "x-ms-dynamics-entity-name": "account",
        "x-ms-dynamics-request-name": "create",
    }
    return lambda session, i: session.post(url, data=bodies[i], headers=headers, timeout=30).status_code


def liveness_sender(stack: DevstackProcess) -> Callable[[requests.Session, int], int]:
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/health/live"
    return lambda session, i: session.get(url, timeout=30).status_code


def processed(stack: DevstackProcess, record_ids: set[str]) -> Counter[str]:
    """Blobs written by the processor per record id (one each when every event was processed once)."""
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        EVENT_CONTAINER
    )
    found: Counter[str] = Counter()
    if not container.exists():
        return found
    for blob in container.list_blobs(name_starts_with="dataverse/account/"):
        record_id = blob.name.split("/")[2]
        if record_id in record_ids:
            found[record_id] += 1
    return found


def wait_until_processed(stack: DevstackProcess, record_ids: set[str], timeout_s: float = DRAIN_TIMEOUT_S) -> Any:
    """(per-record effect counts, seconds waited)."""
    started = time.monotonic()
    found = processed(stack, record_ids)
    while len(found) < len(record_ids) and time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        found = processed(stack, record_ids)
    return found, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries per second")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for bench.report)")
    args = parser.parse_args()
    state = ROOT / ".devstack" / "bench-webhooks"
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", state, "bench-webhooks",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    try:
        bodies, ids = account_creates(args.count)
        warm_bodies, warm_ids = account_creates(20)
        send_at_rate(dataverse_sender(stack, warm_bodies), len(warm_bodies), 20)  # imports, clients, queue
        wait_until_processed(stack, warm_ids)
        baseline = send_at_rate(liveness_sender(stack), args.count, args.rate)
        # The latency is the receiver's only while neither the sender, devstack (the host and its worker run
        # under it) nor anything else on the machine ran out of CPU while the deliveries were sent.
        with CpuSampler(stack.proc.pid, period_s=None) as sampler:
            load = send_at_rate(dataverse_sender(stack, bodies), args.count, args.rate)
        cpu = sampler.window()
        acked = time.monotonic()
        found, _ = wait_until_processed(stack, ids)
        drain_s = time.monotonic() - acked
    finally:
        stack.stop()
    once = sum(1 for n in found.values() if n == 1)
    ratio = load.percentile(99) / max(baseline.percentile(99), 0.001)
    if args.json:
        print(json.dumps({
            "count": args.count, "rate": args.rate, "acknowledged_202": load.statuses.get(202, 0),
            "p50_ms": load.percentile(50), "p95_ms": load.percentile(95), "p99_ms": load.percentile(99),
            "floor_p99_ms": baseline.percentile(99), "ratio_p99": ratio, "processed": len(found),
            "processed_once": once, "drain_s": drain_s, "saturated": cpu.saturated, "cpu": cpu.as_dict(),
        }))  # fmt: skip
        return
    print(f"machine: {platform.processor() or platform.machine()}, {args.count} requests at {args.rate:.0f}/s each")
    print(f"liveness (host floor): {baseline.summary()}")
    print(f"dataverse webhook:     {load.summary()}")
    print(f"receiver p99 / host-floor p99: {ratio:.2f}x")
    print(f"while the deliveries were sent: {cpu.summary()}")
    print(
        f"processed: {len(found)}/{len(ids)} events ({once} exactly once),"
        f" all processed {drain_s:.1f} s after the last acknowledgement"
    )


if __name__ == "__main__":
    main()
