"""The webhook rows of the fault matrix: Dataverse changes delivered to a local Functions host that is
stopped, SIGKILLed, or sent the deliveries out of order, then checked against the emulator's store.

    python -m tests.reliability.webhook_matrix [--writes 2000] [--time-scale 0.25] [--only NAME ...]
                                               [--write RELIABILITY.md]

Each row starts a fresh devstack and a separate local host on a fixed port, registers a service endpoint
for account Create/Update/Delete on the host's receiver (WebhookKey), initialises the reconciler's
checkpoint, then writes through the Web API: creates, updates of random records, and deletes. Meanwhile
the fault: the host stopped for 60 s (time-scaled: Dataverse's delivery timeout is scaled alike), or
SIGKILLed while it processes and started again, or the emulator's seeded reorder window, or all at once.
Deliveries that find the host gone fail as Dataverse's do (a Failed system job, no retry).

Afterwards, as the timers would: the reconciler runs (``POST /api/webhooks-admin/reconcile``) until the
host has nothing left to do, and the failed-delivery watcher runs (``POST /api/webhooks-admin/watch``).
Checked: the blob sink's latest state per record equals the store (its ``versionnumber``; a deleted
record's last effect is its Delete), no record had an older change applied after a newer one (blobs sorted
by ``applied_at``), the watcher counted exactly the emulator's failed system jobs, and the emulator's
delivery counters add up (every job succeeded or failed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack.host import QUEUE_LEASE_SETTING
from shared.webhooks.ordering import DEFAULT_LEASE_S as ORDERING_LEASE_S
from tests.devstack_process import ROOT, DevstackProcess
from tests.host_process import HostProcess
from tests.reliability.matrix import write_section

STOP_S = 60.0  # the host's outage, in Dataverse seconds (scaled by the row's time scale)
WRITERS = 4  # threads writing to the emulator
CREATE_SHARE, DELETE_SHARE = 0.25, 0.05  # of the writes: creates first, deletes last, updates between
QUIET_S = 3.0  # queue empty and no invocation for this long: the host is done
SETTLE_TIMEOUT_S = 600
RECONCILE_ROUNDS = 4  # reconcile, wait, again: until a run enqueues nothing
REORDER = {"window": 4, "seed": 19, "max_wait_s": 2.0}
NEVER = "0 0 0 1 1 *"  # the timers' schedules: the rows run reconciler and watcher themselves
EVENT_CONTAINER = "webhook-events"
MISMATCHES_SHOWN = 5
DROP_LOG_EVENTS = ("webhook_stale", "webhook_duplicate", "webhook_superseded")  # the processor's log events
HOST_MESSAGE_LEASE_S = 600  # the Functions host's hold on a received message
MIN_MESSAGE_LEASE_S = 20  # longer than any invocation here, so no message runs twice while alive
MARKER_START, MARKER_END = "<!-- webhook-matrix:start -->", "<!-- webhook-matrix:end -->"


@dataclass(frozen=True)
class WebhookFault:
    name: str
    exercises: str
    stop: bool = False  # the host stopped for STOP_S (scaled) a quarter into the writes
    kill: bool = False  # the host SIGKILLed mid-processing, three fifths into the writes, and restarted
    reorder: bool = False  # the emulator's seeded reorder window


def webhook_faults() -> list[WebhookFault]:
    single = [
        WebhookFault("none", "the baseline"),
        WebhookFault("host stopped for 60 s", "deliveries refused: Failed system jobs, recovered by the"
                     " reconciler from change tracking", stop=True),
        WebhookFault("host SIGKILLed mid-processing", "invocations die without cleanup: the queue redelivers"
                     " their messages, the ordering claims' leases expire, refused deliveries are reconciled",
                     kill=True),
        WebhookFault("deliveries reordered", "a later change arrives first: the older one is dropped as stale",
                     reorder=True),
    ]  # fmt: skip
    return [*single, WebhookFault("all of the above together", "every fault in one row", True, True, True)]


@dataclass
class WebhookOutcome:
    fault: str
    writes: int
    records: int = 0
    deleted: int = 0
    effects: int = 0  # blobs the handlers wrote
    unprocessed: int = 0  # records whose latest state in the sink is not the store's
    stale_applications: int = 0  # effects applied after a newer one of their record
    jobs: int = 0  # the emulator's system jobs of our step
    failed_jobs: int = 0  # of them Failed (statuscode 31)
    watcher_failed_jobs: int = -1
    reconciled: int = 0  # events the reconciler enqueued
    reconcile_runs: int = 0
    dropped_stale: int = 0  # events the ordering guard dropped as older than the applied version
    dropped: dict[str, int] = field(default_factory=dict)  # every event not applied, by the processor's reason
    deliveries: dict[str, int] = field(default_factory=dict)  # the emulator's counters
    totals_consistent: bool = False
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # a few records not at the store's state, and why

    @property
    def ok(self) -> bool:
        return (
            self.unprocessed == 0
            and self.stale_applications == 0
            and self.watcher_failed_jobs == self.failed_jobs
            and self.totals_consistent
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Row:
    """One row's devstack, host (restartable on the same port) and writer."""

    def __init__(
        self,
        fault: WebhookFault,
        workdir: Path,
        time_scale: float,
        apply_env: Callable[[DevstackProcess], object] | None = None,
    ) -> None:
        from tests.conftest import reset_all_workers
        from tests.dataverse_api import api_for

        self.fault = fault
        slug = "".join(c if c.isalnum() else "-" for c in fault.name.lower())[:40]
        self.name = f"whmatrix-{slug}"
        self.stack = DevstackProcess(
            ROOT / "devstack" / "scenarios" / "default.yaml", workdir / slug, self.name, "--time-scale", str(time_scale)
        )
        try:
            if apply_env is None:  # this process calls the emulator as the app (its token, its CA)
                os.environ.update(self.stack.app_settings())
                reset_all_workers()
            else:
                apply_env(self.stack)
            self.api = api_for(self.stack)
        except BaseException:
            self.stack.stop()
            raise
        self.time_scale = time_scale
        self.port = free_port()
        self.env = {
            "WEBSITE_HOSTNAME": f"127.0.0.1:{self.port}",  # how the watcher finds its service endpoint
            "WEBHOOK_RECONCILE_SCHEDULE": NEVER,
            "WEBHOOK_WATCH_SCHEDULE": NEVER,
            # The host's 10-minute hold on the messages it received, time-scaled: a killed host's come back then.
            QUEUE_LEASE_SETTING: str(max(MIN_MESSAGE_LEASE_S, round(HOST_MESSAGE_LEASE_S * time_scale))),
        }
        self.hosts: list[HostProcess] = []
        self.killed_at: float | None = None
        self.lock = threading.Lock()

    def start_host(self) -> HostProcess:
        host = HostProcess(self.stack, self.name, self.env, port=self.port)
        with self.lock:
            self.hosts.append(host)
        return host

    @property
    def host(self) -> HostProcess:
        with self.lock:
            return self.hosts[-1]

    def admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.host.post(path, timeout=SETTLE_TIMEOUT_S, key=self.host.master_key(), json=body or {})
        answer.raise_for_status()
        return dict(answer.json())

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        self.stack.stop()


def register_endpoint(row: Row) -> None:
    url = f"http://127.0.0.1:{row.port}/api/webhooks/dataverse"
    key = row.host.function_key("dataverse_webhook")
    row.stack.control("dataverse", {"webhooks": [{"url": url, "table": "account",
                                                  "messages": ["Create", "Update", "Delete"],
                                                  "auth": {"type": "WebhookKey", "value": key}}]})  # fmt: skip
    if row.fault.reorder:
        row.stack.control("dataverse", {"webhook_reorder": REORDER})


def write_changes(row: Row, writes: int, prefix: str, progress: Callable[[int], None]) -> tuple[set[str], set[str]]:
    """Creates, then updates of random records, then deletes: ``writes`` requests. Returns (ids, deleted)."""
    creates = max(1, int(writes * CREATE_SHARE))
    deletes = int(writes * DELETE_SHARE)
    updates = writes - creates - deletes
    done = 0
    lock = threading.Lock()

    def counted(answer: Any) -> Any:
        nonlocal done
        answer.raise_for_status()
        with lock:
            done += 1
            progress(done)
        return answer

    def create(i: int) -> str:
        answer = counted(row.api("POST", "accounts", json={"name": f"hook {i}", "accountnumber": f"{prefix}{i:05}"}))
        return str(answer.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))

    chooser = random.Random(writes)
    with ThreadPoolExecutor(WRITERS) as pool:
        ids = list(pool.map(create, range(creates)))
        chosen = [chooser.choice(ids) for _ in range(updates)]
        list(pool.map(lambda pair: counted(row.api("PATCH", f"accounts({pair[1]})",
                                                   json={"telephone1": f"+49 {pair[0]:06}"})),
                      enumerate(chosen)))  # fmt: skip
        gone = chooser.sample(ids, min(deletes, len(ids)))
        list(pool.map(lambda record: counted(row.api("DELETE", f"accounts({record})")), gone))
    return set(ids), set(gone)


def processor_runs(row: Row) -> int:
    return sum(1 for host in list(row.hosts) for line in list(host.lines) if "Functions.webhook_processor" in line)


def wait_until_done(row: Row) -> None:
    """The emulator has no delivery in flight, the event queue is empty (messages waiting for a retry, and
    those a killed host held until its message lease ends, included) and no processor ran for QUIET_S."""
    from shared.storage import Storage

    events = Storage(row.stack.env["AzureWebJobsStorage"]).queue("webhook-events")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    seen = (-1, -1)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        counters = row.stack.stats("dataverse").get("counters", {})
        jobs = int(counters.get("webhook deliveries succeeded", 0)) + int(counters.get("webhook deliveries failed", 0))
        now = (processor_runs(row), jobs)
        if now != seen:
            seen, quiet_since = now, time.monotonic()
            continue
        if time.monotonic() - quiet_since >= QUIET_S and events.get_queue_properties().approximate_message_count == 0:
            return
    raise TimeoutError("the host never finished the events")


def store_versions(row: Row, prefix: str) -> dict[str, int]:
    found: dict[str, int] = {}
    link: str | None = f"{row.api.root}/accounts?$select=versionnumber&$filter=startswith(accountnumber,'{prefix}')"
    while link:
        page = row.api("GET", link, headers={"Prefer": "odata.maxpagesize=5000"}).json()
        for record in page["value"]:
            found[str(record["accountid"])] = int(record["versionnumber"])
        link = page.get("@odata.nextLink")
    return found


def sink_effects(row: Row, ids: set[str]) -> dict[str, list[tuple[float, str, int | None]]]:
    """Per record: (applied_at, message, row_version) of every effect the blob handler wrote."""
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(row.stack.env["AzureWebJobsStorage"]).get_container_client(
        EVENT_CONTAINER
    )
    found: dict[str, list[tuple[float, str, int | None]]] = {}
    if not container.exists():
        return found
    names = [b.name for b in container.list_blobs(name_starts_with="dataverse/account/")]

    def read(name: str) -> tuple[str, tuple[float, str, int | None]] | None:
        if name.split("/")[2] not in ids:
            return None
        document = json.loads(container.download_blob(name).readall())
        event = document["event"]
        return str(event["record_id"]), (float(document["applied_at"]), str(event["message"]), event.get("row_version"))

    with ThreadPoolExecutor(8) as pool:
        for item in pool.map(read, names):
            if item is not None:
                found.setdefault(item[0], []).append(item[1])
    return found


def judge(effects: list[tuple[float, str, int | None]], version: int | None) -> tuple[bool, int]:
    """(the sink's latest state is the store's, effects applied after a newer one). ``version`` None: the
    record is deleted in the store."""
    ordered = sorted(effects)
    stale = 0
    newest: int | None = None
    deleted = False
    for _, message, row_version in ordered:
        if deleted or (newest is not None and row_version is not None and row_version <= newest):
            stale += 1
        if message == "Delete":
            deleted = True
        elif row_version is not None:
            newest = row_version
    if not ordered:
        return False, stale
    _, last_message, last_version = ordered[-1]
    if version is None:
        return last_message == "Delete", stale
    return last_message != "Delete" and last_version == version, stale


def failed_jobs(row: Row) -> tuple[int, int]:
    """(all system jobs, Failed ones) of the steps of our service endpoint, as the emulator serves them."""
    url = f"http://127.0.0.1:{row.port}/api/webhooks/dataverse"
    endpoints = row.api("GET", "serviceendpoints", params={"$filter": f"url eq '{url}'"}).json()["value"]
    total = failed = 0
    for endpoint in endpoints:
        step_filter = f"_eventhandler_value eq {endpoint['serviceendpointid']}"
        steps = row.api("GET", "sdkmessageprocessingsteps", params={"$filter": step_filter}).json()["value"]
        for step in steps:
            step_id = step["sdkmessageprocessingstepid"]
            for status, bucket in ((None, "all"), (31, "failed")):
                condition = f"_owningextensionid_value eq {step_id}" + (
                    f" and statuscode eq {status}" if status else ""
                )
                answer = row.api("GET", "asyncoperations", params={"$filter": condition, "$count": "true",
                                                                   "$select": "asyncoperationid"})  # fmt: skip
                count = int(answer.json()["@odata.count"])
                total, failed = (total + count, failed) if bucket == "all" else (total, failed + count)
    return total, failed


def run_webhook_row(
    fault: WebhookFault,
    writes: int,
    workdir: Path,
    time_scale: float,
    apply_env: Callable[[DevstackProcess], object] | None = None,
) -> WebhookOutcome:
    """One row; ``apply_env`` puts the stack's settings in this process (tests pass their ``app_env``
    fixture so the settings are undone afterwards)."""
    started = time.monotonic()
    outcome = WebhookOutcome(fault.name, writes)
    row = Row(fault, workdir, time_scale, apply_env)
    try:
        row.start_host()
        register_endpoint(row)
        row.admin("/api/webhooks-admin/reconcile", {"tables": ["account"]})  # the checkpoint, as the timer sets it
        prefix = "H" + uuid.uuid4().hex[:4].upper()
        stop_at, kill_at = (writes // 4 if fault.stop else -1), (writes * 3 // 5 if fault.kill else -1)
        triggers: list[tuple[int, Callable[[], None]]] = []

        def stop_host() -> None:
            row.host.stop()
            outcome.events.append(f"host stopped at {stop_at:,} writes for {STOP_S * time_scale:g} s")
            time.sleep(STOP_S * time_scale)
            row.start_host()

        def kill_host() -> None:
            row.killed_at = time.monotonic()
            row.host.kill()
            outcome.events.append(f"host SIGKILLed at {kill_at:,} writes, {processor_runs(row)} invocations in")
            row.start_host()

        if stop_at >= 0:
            triggers.append((stop_at, stop_host))
        if kill_at >= 0:
            triggers.append((kill_at, kill_host))
        fired: set[int] = set()
        threads: list[threading.Thread] = []
        one_at_a_time = threading.Lock()  # a kill waits for the stopped host to be back

        def serialized(action: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with one_at_a_time:
                    action()

            return run

        def progress(done: int) -> None:
            for at, action in triggers:
                if done >= at and at not in fired:
                    fired.add(at)
                    thread = threading.Thread(target=serialized(action), daemon=True)
                    threads.append(thread)
                    thread.start()

        ids, gone = write_changes(row, writes, prefix, progress)
        for thread in threads:
            thread.join(timeout=SETTLE_TIMEOUT_S)
        wait_until_done(row)
        for _ in range(RECONCILE_ROUNDS):  # as the timer would, until nothing is left to recover
            if row.killed_at is not None:  # the killed invocations' ordering claims count until their lease ends
                time.sleep(max(0.0, row.killed_at + ORDERING_LEASE_S + 1 - time.monotonic()))
            report = row.admin("/api/webhooks-admin/reconcile", {"tables": ["account"]})
            outcome.reconcile_runs += 1
            outcome.reconciled += int(report["enqueued"])
            wait_until_done(row)
            if int(report["enqueued"]) == 0:
                break
        watched = row.admin("/api/webhooks-admin/watch")
        outcome.watcher_failed_jobs = int(watched["failed_jobs"])

        store = store_versions(row, prefix)
        effects = sink_effects(row, ids)
        outcome.records, outcome.deleted = len(ids), len(gone)
        outcome.effects = sum(len(e) for e in effects.values())
        for record in ids:
            latest, stale = judge(effects.get(record, []), store.get(record))
            if not latest or (record in gone) != (record not in store):
                outcome.unprocessed += 1
                if len(outcome.mismatches) < MISMATCHES_SHOWN:
                    applied = [(m, v) for _, m, v in sorted(effects.get(record, []))]
                    outcome.mismatches.append(f"{record}: store {store.get(record, 'deleted')}, applied {applied}")
            outcome.stale_applications += stale
        outcome.jobs, outcome.failed_jobs = failed_jobs(row)
        log = [line for host in row.hosts for line in list(host.lines)]
        outcome.dropped = {name: sum(1 for line in log if f"{name} " in line) for name in DROP_LOG_EVENTS}
        outcome.dropped_stale = outcome.dropped["webhook_stale"]
        counters = row.stack.stats("dataverse").get("counters", {})
        outcome.deliveries = {k.removeprefix("webhook deliveries "): int(v) for k, v in counters.items()
                              if k.startswith("webhook deliveries ")}  # fmt: skip
        succeeded, failed = outcome.deliveries.get("succeeded", 0), outcome.deliveries.get("failed", 0)
        outcome.totals_consistent = (
            outcome.jobs == succeeded + failed == writes  # one job per change, each completed
            and outcome.deliveries.get("attempted", 0) == succeeded + failed + outcome.deliveries.get("retried", 0)
            and (outcome.failed_jobs == 0 or outcome.reconciled > 0)  # what failed was recovered
        )
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        row.stop()


def render(outcomes: list[WebhookOutcome], command: str, seconds: float) -> str:
    lines = [
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{command}` ({seconds / 60:.1f} min).",
        "",
        "| fault | writes | records (deleted) | effects | unprocessed | stale applied | stale dropped | failed jobs |"
        " watcher | reconciled (runs) | totals | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        tick = "✅" if o.totals_consistent else "❌"
        lines.append(
            f"| {o.fault} | {o.writes:,} | {o.records:,} ({o.deleted}) | {o.effects:,} | {o.unprocessed} |"
            f" {o.stale_applications} | {o.dropped_stale} | {o.failed_jobs} | {o.watcher_failed_jobs} |"
            f" {o.reconciled} ({o.reconcile_runs})"
            f" | {tick} | {o.seconds:.0f} |"
        )
    notes = [f"- {o.fault}: {'; '.join([*o.events, *o.mismatches])}" for o in outcomes if o.events or o.mismatches]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=2_000)
    parser.add_argument("--time-scale", type=float, default=0.25, help="Dataverse seconds -> real seconds")
    parser.add_argument("--only", nargs="*", help="fault names (prefix match) to run; default all")
    parser.add_argument("--write", help="rewrite the webhook matrix section of this markdown file")
    parser.add_argument("--dir", default=str(ROOT / ".devstack" / "webhook-matrix"))
    args = parser.parse_args(argv)
    rows = [f for f in webhook_faults() if not args.only or any(f.name.startswith(o) for o in args.only)]
    started = time.monotonic()
    outcomes = []
    for fault in rows:
        outcome = run_webhook_row(fault, args.writes, Path(args.dir), args.time_scale)
        print(json.dumps({**asdict(outcome), "ok": outcome.ok}), flush=True)
        outcomes.append(outcome)
    command = "python -m tests.reliability.webhook_matrix " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(outcomes, command.strip(), time.monotonic() - started)
    print(text)
    if args.write:
        write_section(Path(args.write), text, MARKER_START, MARKER_END)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
