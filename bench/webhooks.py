"""Webhook acknowledgement latency under a steady delivery rate, and Azure Storage calls per event, against
the local Functions host.

    python -m bench.webhooks [--count 2000] [--rate 100] [--app-dir DIR] [--no-storage-calls]

Sends ``--count`` Dataverse deliveries (RemoteExecutionContexts for account Creates, built by the emulator's
own serializer) open-loop at ``--rate`` per second to ``POST /api/webhooks/dataverse``, then waits until
the queue processor has written every event's blob. Side by side in the same run and at the same rate, it
sends as many requests to the host's liveness endpoint: the receiver's overhead is reported as the ratio
of the two p99s, so the figure does not depend on how fast this machine is.

Latency is measured from each request's *scheduled* send time, so a backlog in the sender counts against
the receiver rather than hiding (no coordinated omission).

Storage calls are counted from Azurite's own access log (devstack started with
``DEVSTACK_AZURITE_ACCESS_LOG=1``; one line per request Azurite served, see :func:`parse_access_line`) over
the measured deliveries: from just before the first is sent until the host has deleted every event's queue
message, which it does after the processor's invocation returned. Each call is put in a phase by what it
is (:func:`phase`): ``receive`` (the receiver's queue message, a claim-check blob), ``process`` (receiving,
deleting and re-queueing messages, the ordering guard's table, the blob sink), ``receive or process`` (the
previous design's dedupe table, written by both: an entity's URL names its partition, hence its scope, but an
insert's does not, so the log cannot tell the receiver's record from the processor's claim) and
``background`` (anything else: other queues' polling, timers), which is reported but not counted per event.
The timers' schedules are moved to once a year for the run so that a sync or reconcile does not land in it.

``--app-dir`` runs the host on another checkout's app (``git worktree add /tmp/base <rev>``, then
``python -m shared.stamps`` in it) with this checkout's devstack and bench, so two designs are measured by
the same harness: run it once per tree, back to back.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests
import yaml

from bench.cpu_window import CpuSampler
from tests.devstack_process import ARTIFACTS, ROOT, DevstackProcess

SENDER_THREADS = 32  # enough to keep 100/s flowing while some acknowledgements are slow
EVENT_CONTAINER = "webhook-events"
EVENT_QUEUE = "webhook-events"
CLAIM_CONTAINER = "webhook-claims"
DRAIN_TIMEOUT_S = 300
ACCESS_LOG_SETTING = "DEVSTACK_AZURITE_ACCESS_LOG"  # devstack.azurite's switch (not imported: keeps this light)
NEVER_DURING_A_RUN = "0 0 0 1 1 *"  # NCRONTAB: midnight on 1 January
HOST_LOG = ARTIFACTS / "bench-webhooks-host.log"  # the host's invocation log of the last run


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


# -- storage calls, from Azurite's access log ----------------------------------------------------------
# morgan's "common" format, which Azurite 3.x writes for each of its three services once a response is sent:
#   127.0.0.1 - - [03/Dec/2026:12:03:02 +0000] "POST /devstoreaccount1/webhook-events/messages HTTP/1.1" 201 -
_ACCESS_LINE = re.compile(
    r'(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/\d(?:\.\d)?"'
    r" (?P<status>\d{3}) (?:\d+|-)"
)
# What starts like a request line (an address, then " - "): one that does not parse whole is malformed. Any
# other line is one of Azurite's own messages ("Azurite Blob service is starting at ...") and is ignored.
_REQUEST_LIKE = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*) - ")
_TABLE_ENTITY = re.compile(r"(?P<table>[A-Za-z][A-Za-z0-9]*)\((?P<keys>.*)\)")
_PARTITION = re.compile(r"PartitionKey='(?P<key>(?:[^']|'')*)'")
_TABLES = re.compile(r"Tables(?:\('(?P<table>[^']*)'\))?")


@dataclass(frozen=True)
class StorageCall:
    """One request Azurite served: its service, the queue, container or table it named ("" for the account
    or an entity-group transaction, whose URL names no table) and the operation."""

    service: str  # "blob", "queue", "table"; "account" for account-level calls the URL does not place
    resource: str
    operation: str
    status: int
    partition: str = ""  # a table entity's PartitionKey, when the URL names the entity

    @property
    def kind(self) -> str:
        return f"{self.service} {self.operation}" + (f" ({self.resource})" if self.resource else "")


def classify(method: str, target: str) -> tuple[str, str, str]:
    """(service, resource, operation) of a request from its method and path. Azurite logs neither its port
    nor the host, so the service is told by the shape of the path, which the three REST APIs keep apart: a
    table's segment is ``Tables``, ``$batch`` or ``name(...)`` (and only a table takes a POST on a bare name),
    a queue's second segment is ``messages``, a container call carries ``restype=container``; the rest is a
    blob. A blob named ``messages`` or ``messages/...`` would pass for a queue call; none of the app's blobs
    are named so."""
    url = urlsplit(target)
    query = {k.lower(): v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    segments = [unquote(part) for part in url.path.split("/")[1:]]
    rest = segments[1:]  # after the account
    comp, restype = query.get("comp", ""), query.get("restype", "")
    if not rest or rest == [""]:
        return "account", "", f"{method} {comp or restype or '/'}"
    first = rest[0]
    tables = _TABLES.fullmatch(first)
    if tables:
        name = tables.group("table") or ""
        return (
            "table",
            name,
            {"POST": "create table", "GET": "query tables", "DELETE": "delete table"}.get(method, f"{method} table"),
        )
    if first == "$batch":
        return "table", "", "transaction"
    entity = _TABLE_ENTITY.fullmatch(first)
    if entity and len(rest) == 1:
        if not entity.group("keys"):
            return "table", entity.group("table"), "query" if method == "GET" else f"{method} entities"
        operation = {"GET": "get entity", "PUT": "replace entity", "PATCH": "merge entity", "MERGE": "merge entity",
                     "DELETE": "delete entity"}.get(method, f"{method} entity")  # fmt: skip
        return "table", entity.group("table"), operation
    if len(rest) >= 2 and rest[1] == "messages":
        if len(rest) == 2:
            if method == "GET":
                return "queue", first, "peek messages" if query.get("peekonly") == "true" else "get messages"
            return "queue", first, {"POST": "put message", "DELETE": "clear messages"}.get(method, f"{method} messages")
        return "queue", first, {"DELETE": "delete message", "PUT": "update message"}.get(method, f"{method} message")
    if len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
        if restype == "container":
            return "blob", first, f"{method} container" + (f" {comp}" if comp else "")
        if method == "POST" and not comp:
            return "table", first, "insert entity"
        return "queue", first, f"{method} queue" + (f" {comp}" if comp else "")
    blob_operation = {"PUT": "put blob", "GET": "get blob", "HEAD": "blob properties", "DELETE": "delete blob"}
    operation = blob_operation.get(method, f"{method} blob")
    return "blob", first, f"{operation} {comp}" if comp else operation


def parse_access_line(line: str) -> StorageCall | None:
    """The call an access-log line records; None for a line that is not one (Azurite's own messages).
    Raises :class:`ValueError` for a line that starts like a request line but does not parse whole (a
    truncated write, another format): the caller counts it as malformed rather than guessing."""
    text = line.rstrip("\r\n")
    match = _ACCESS_LINE.fullmatch(text)
    if match is None:
        if _REQUEST_LIKE.match(text):
            raise ValueError(f"not an access-log line: {text[:200]!r}")
        return None
    service, resource, operation = classify(match.group("method"), match.group("target"))
    partition = partition_of(match.group("target")) if service == "table" else ""
    return StorageCall(service, resource, operation, int(match.group("status")), partition)


def partition_of(target: str) -> str:
    """The PartitionKey a table entity's URL names ("" when it names none: an insert, a query)."""
    found = _PARTITION.search(unquote(urlsplit(target).path))
    return found.group("key").replace("''", "'") if found else ""


RECEIVE, PROCESS, EITHER, BACKGROUND = "receive", "process", "receive or process", "background"
PHASES = (RECEIVE, PROCESS, EITHER)
WEBHOOK_TABLES = ("webhookapplied",)  # the ordering guard's (its transactions are the "$batch" calls)
DEDUPE_TABLE = "webhookdedupe"  # the previous design's: the receiver's records and the processor's claims
WEBHOOK_CONTAINERS = (EVENT_CONTAINER, "webhook-deadletters")


def phase(call: StorageCall) -> str:
    """Which part of the webhook path made a call (see the module's docstring); ``background`` when none."""
    if call.service == "queue" and call.resource == EVENT_QUEUE:
        return RECEIVE if call.operation == "put message" else PROCESS
    if call.service == "queue" and call.resource == f"{EVENT_QUEUE}-poison":
        return PROCESS
    if call.service == "blob" and call.operation.startswith("GET container"):
        return BACKGROUND  # listing or probing a container: the bench's own drain check, never the app's path
    if call.service == "blob" and call.resource == CLAIM_CONTAINER:
        return RECEIVE if call.operation == "put blob" else PROCESS
    if call.service == "blob" and call.resource in WEBHOOK_CONTAINERS:
        return PROCESS
    if call.service == "table" and (call.resource in WEBHOOK_TABLES or call.operation == "transaction"):
        return PROCESS  # the guard is the only user of entity-group transactions
    if call.service == "table" and call.resource == DEDUPE_TABLE:
        # its scopes: the receiver's "received-<source>" records, the processor's "processed-<source>" claims
        if call.partition.startswith(("received-", "nonce-")):
            return RECEIVE
        return PROCESS if call.partition.startswith("processed-") else EITHER
    return BACKGROUND


@dataclass
class StorageCalls:
    """Calls counted from access-log lines, by phase and kind; lines that did not parse, kept as samples."""

    by_phase: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in (*PHASES, BACKGROUND)})
    # Kinds answered 4xx/5xx (counted above too). Not a refused entity-group transaction: Table storage
    # answers a $batch 202 and puts each operation's status in the body, which the access log does not show;
    # the guard's one-at-a-time fallback after one shows as single-entity calls on its table instead.
    failed: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    malformed_samples: list[str] = field(default_factory=list)

    def add_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            try:
                call = parse_access_line(line)
            except ValueError:
                self.malformed += 1
                if len(self.malformed_samples) < 3:
                    self.malformed_samples.append(line.rstrip("\r\n")[:200])
                continue
            if call is not None:
                self.by_phase[phase(call)][call.kind] += 1
                if call.status >= 400:
                    self.failed[call.kind] += 1

    def total(self, *phases: str) -> int:
        return sum(sum(self.by_phase[p].values()) for p in phases or PHASES)

    def count(self, kind: str) -> int:
        return sum(self.by_phase[p][kind] for p in PHASES)

    def per_event(self, events: int) -> dict[str, Any]:
        """What ``--json`` reports: calls per event in all, by phase and by kind; background calls as counts."""
        n = max(events, 1)
        return {
            "calls_per_event": self.total() / n,
            "by_phase": {p: self.total(p) / n for p in PHASES},
            "by_kind": {p: {kind: count / n for kind, count in sorted(self.by_phase[p].items())} for p in PHASES},
            "background_calls": dict(sorted(self.by_phase[BACKGROUND].items())),
            "failed_calls": dict(sorted(self.failed.items())),
            "malformed_lines": self.malformed,
        }

    def summary(self, events: int) -> list[str]:
        n = max(events, 1)
        lines = [f"storage calls per event: {self.total() / n:.2f} ("
                 + ", ".join(f"{p} {self.total(p) / n:.2f}" for p in PHASES if self.by_phase[p]) + ")"]  # fmt: skip
        for p in PHASES:
            for kind, count in sorted(self.by_phase[p].items(), key=lambda item: -item[1]):
                failed = f", {self.failed[kind]} answered 4xx/5xx" if self.failed[kind] else ""
                lines.append(f"  {p:<18} {count / n:6.3f}  {kind} ({count}{failed})")
        if self.by_phase[BACKGROUND]:
            background = ", ".join(f"{k} {c}" for k, c in self.by_phase[BACKGROUND].most_common())
            lines.append(f"  not counted (background, {self.total(BACKGROUND)} calls): {background}")
        if self.malformed:
            lines.append(f"  {self.malformed} malformed log lines ignored, e.g. {self.malformed_samples[0]!r}")
        return lines


class AccessLog:
    """Azurite's log file read from an offset: only whole lines, so a line being written is read next time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", "replace").splitlines()


def count_until_processed(log: AccessLog, count: int, timeout_s: float = DRAIN_TIMEOUT_S) -> tuple[StorageCalls, bool]:
    """Read the log until the host has deleted ``count`` messages of the event queue (each after its
    invocation returned, so every call of the event is in), counting calls; (calls, False if time ran out
    first: then the counts miss what was still to come)."""
    calls = StorageCalls()
    deadline = time.monotonic() + timeout_s
    while True:
        calls.add_lines(log.read())
        if calls.count(f"queue delete message ({EVENT_QUEUE})") >= count:
            return calls, True
        if time.monotonic() > deadline:
            return calls, False
        time.sleep(0.2)


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


def quiet_timers(app_dir: Path) -> dict[str, str]:
    """App settings that move every timer schedule of the app's local settings to once a year."""
    for name in ("local.settings.json", "local.settings.json.example"):
        path = app_dir / name
        if path.exists():
            values = json.loads(path.read_text()).get("Values") or {}
            return {str(k): NEVER_DURING_A_RUN for k in values if "SCHEDULE" in str(k)}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries per second")
    parser.add_argument("--app-dir", type=Path, help="the Functions app to run (default: this checkout)")
    parser.add_argument("--no-storage-calls", action="store_true", help="Azurite silent, no storage call count")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for bench.report)")
    args = parser.parse_args()
    app_dir = (args.app_dir or ROOT).resolve()
    counting = not args.no_storage_calls
    state = ROOT / ".devstack" / "bench-webhooks"
    (state / "azurite.log").unlink(missing_ok=True)  # devstack appends to it; with the access log, per request
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", state, "bench-webhooks",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0.01", "--app-dir", str(app_dir),
        env={**quiet_timers(app_dir), **({ACCESS_LOG_SETTING: "1"} if counting else {})},
    )  # fmt: skip
    calls: StorageCalls | None = None
    complete = False
    try:
        bodies, ids = account_creates(args.count)
        warm_bodies, warm_ids = account_creates(20)
        send_at_rate(dataverse_sender(stack, warm_bodies), len(warm_bodies), 20)  # imports, clients, queue
        wait_until_processed(stack, warm_ids)
        baseline = send_at_rate(liveness_sender(stack), args.count, args.rate)
        log = AccessLog(stack.directory / "azurite.log")  # from here: the measured deliveries' calls
        # The latency is the receiver's only while neither the sender, devstack (the host and its worker run
        # under it) nor anything else on the machine ran out of CPU while the deliveries were sent.
        with CpuSampler(stack.proc.pid, period_s=None) as sampler:
            load = send_at_rate(dataverse_sender(stack, bodies), args.count, args.rate)
        cpu = sampler.window()
        acked = time.monotonic()
        if counting:
            calls, complete = count_until_processed(log, load.statuses.get(202, 0))
        found, _ = wait_until_processed(stack, ids)
        drain_s = time.monotonic() - acked
    finally:
        stack.stop()
        HOST_LOG.write_text(stack.stdout_text())  # why an invocation failed, should the counts show retries
    once = sum(1 for n in found.values() if n == 1)
    ratio = load.percentile(99) / max(baseline.percentile(99), 0.001)
    if args.json:
        print(json.dumps({
            "count": args.count, "rate": args.rate, "acknowledged_202": load.statuses.get(202, 0),
            "p50_ms": load.percentile(50), "p95_ms": load.percentile(95), "p99_ms": load.percentile(99),
            "answered_per_s": len(load.latencies_ms) / load.elapsed_s, "floor_p99_ms": baseline.percentile(99),
            "ratio_p99": ratio, "processed": len(found),
            "processed_once": once, "drain_s": drain_s, "saturated": cpu.saturated, "cpu": cpu.as_dict(),
            **({"storage": {**calls.per_event(load.statuses.get(202, 0)), "complete": complete}} if calls else {}),
            **({"app_dir": str(app_dir)} if args.app_dir else {}),
        }))  # fmt: skip
        return
    print(f"machine: {platform.processor() or platform.machine()}, {args.count} requests at {args.rate:.0f}/s each")
    print(f"app: {app_dir}")
    print(f"liveness (host floor): {baseline.summary()}")
    print(f"dataverse webhook:     {load.summary()}")
    print(f"receiver p99 / host-floor p99: {ratio:.2f}x")
    print(f"while the deliveries were sent: {cpu.summary()}")
    print(
        f"processed: {len(found)}/{len(ids)} events ({once} exactly once),"
        f" all processed {drain_s:.1f} s after the last acknowledgement"
    )
    if calls is not None:
        print("\n".join(calls.summary(load.statuses.get(202, 0))))
        if not complete:
            print(f"  (incomplete: not every event's message was deleted within {DRAIN_TIMEOUT_S} s)")


if __name__ == "__main__":
    main()
