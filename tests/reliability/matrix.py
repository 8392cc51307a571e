"""The fault matrix: the start-up sync under one fault at a time, then all together, checked against the
emulator's store.

    python -m tests.reliability.matrix [--rows 40000] [--only NAME ...] [--write RELIABILITY.md]

Each row starts a fresh devstack (Azurite on disk, so a restart keeps its data) and a separate local
Functions host, uploads an ERP-style CSV (1 % of rows too long for the name column), applies the fault
and runs the accounts job through ``POST /api/sync/accounts/run`` until a run succeeds, as the timer would
on its next firing. Then, with the fault cleared, it compares Dataverse's store with the CSV (records lost,
records duplicated), reads the dead letters (one per bad row, each with its reason), checks the final run
report's totals, and proves the rest of the app still works: a webhook round trip (a change in Dataverse
reaches the processor's blob) and an expiry sweep (the credential inventory is listed).

Durations (token lifetime, outages) are real seconds: the SDKs' retry timings are real too.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.devstack_process import ROOT, DevstackProcess
from tests.host_process import HostProcess

LEASE_S = 15  # the shortest blob lease: a killed host's run frees the job this fast
BATCH_SIZE = 100  # per UpsertMultiple: 400 requests for 40k rows, so that 1 % of requests is several faults
RUN_TIMEOUT_S = 900
RETRY_PAUSE_S = 3.0  # between a failed run and the next (the timer would wait for its next firing)
BAD_EVERY = 100  # every 100th row has a 200-character name: dead-lettered as TooLong
NAME_MAX = 160
MARKER_START, MARKER_END = "<!-- matrix:start -->", "<!-- matrix:end -->"


@dataclass(frozen=True)
class Fault:
    name: str
    exercises: str
    dataverse: dict[str, Any] = field(default_factory=dict)  # /_devstack/control payload
    outages: tuple[str, ...] = ()  # DEVSTACK_*_URL settings of the servers taken down at the start
    mid_run: tuple[str, ...] = ()  # "azurite-restart", "host-kill" at a third of the rows


def faults(outage_s: float, token_age_s: float) -> list[Fault]:
    return [
        Fault("none", "the baseline: every count below must equal it"),
        Fault("429 on 5 % of requests", "Retry-After honoured by the throttle governor; the planner resends",
              {"faults": [{"kind": "429", "route": "POST ", "rate": 0.05, "code": "0x80072322", "retry_after_s": 1}]}),
        Fault("503 on 2 % of requests", "transient server errors retried with back-off",
              {"faults": [{"kind": "503", "route": "POST ", "rate": 0.02}]}),
        Fault("connection reset on 1 % of requests", "a dropped connection: the write may or may not have happened;"
              " upserts by alternate key make the resend idempotent",
              {"faults": [{"kind": "reset", "route": "POST ", "rate": 0.01}]}),
        Fault(f"Dataverse tokens rejected after {token_age_s:g} s", "401 mid-run: the provider drops the cached"
              " token and acquires a new one", {"max_token_age_s": token_age_s}),
        Fault(f"Key Vault down for {outage_s:g} s", "a cold worker cannot read the credential: the run fails"
              " with KeyVaultUnreachable and the next one succeeds", outages=("DEVSTACK_KEY_VAULT_URL",)),
        Fault(f"Entra down for {outage_s:g} s", "no token: the run fails with EntraUnavailable, nothing is"
              " marked processed, the next run succeeds", outages=("DEVSTACK_ENTRA_URL",)),
        Fault("Azurite restarted mid-run", "storage calls fail for a moment: lease, hash index, dead letters"
              " and checkpoints must survive or be redone", mid_run=("azurite-restart",)),
        Fault("host SIGKILLed mid-run and restarted", "the run dies without cleanup; its lease expires and the"
              " next run resends from the last checkpoint", mid_run=("host-kill",)),
    ]  # fmt: skip


def combined(single: list[Fault]) -> Fault:
    merged: dict[str, Any] = {"faults": []}
    for fault in single:
        merged["faults"] += fault.dataverse.get("faults", [])
        if "max_token_age_s" in fault.dataverse:
            merged["max_token_age_s"] = fault.dataverse["max_token_age_s"]
    return Fault(
        "all of the above together",
        "every fault in one run",
        merged,
        tuple(o for f in single for o in f.outages),
        tuple(m for f in single for m in f.mid_run),
    )


@dataclass
class Outcome:
    fault: str
    rows: int
    expected: int
    present: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_letters: int = 0
    dead_letters_expected: int = 0
    dead_letters_without_reason: int = 0
    runs: int = 0
    totals_consistent: bool = False
    webhook_round_trip: bool = False
    expiry_sweep: bool = False
    throttles: int = 0
    injected: dict[str, int] = field(default_factory=dict)  # what the emulator did: faults fired, 401s
    seconds: float = 0.0
    failed_runs: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what was done mid-run, and when

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.dead_letters == self.dead_letters_expected
            and self.dead_letters_without_reason == 0
            and self.totals_consistent
            and self.webhook_round_trip
            and self.expiry_sweep
        )


def host_env(jobs_file: Path) -> dict[str, str]:
    return {"SYNC_LEASE_DURATION_S": str(LEASE_S), "SYNC_JOBS_FILE": str(jobs_file)}


def erp_csv(rows: int, prefix: str) -> tuple[bytes, int]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(["CustomerNo", "Name", "Phone"])
    bad = 0
    for i in range(rows):
        name = f"Matrix {i}"
        if i % BAD_EVERY == BAD_EVERY - 1:
            name, bad = "X" * (NAME_MAX + 40), bad + 1
        writer.writerow([f"{prefix}{i:06}", name, f"+49 30 {i:06}"])
    return buffer.getvalue().encode(), bad


def account_counts(stack: DevstackProcess, prefix: str) -> dict[str, int]:
    from tests.dataverse_api import api_for

    api = api_for(stack)
    seen: dict[str, int] = {}
    link: str | None = f"{api.root}/accounts?$select=accountnumber&$filter=startswith(accountnumber,'{prefix}')"
    while link:
        page = api("GET", link, headers={"Prefer": "odata.maxpagesize=5000"}).json()
        for row in page["value"]:
            seen[row["accountnumber"]] = seen.get(row["accountnumber"], 0) + 1
        link = page.get("@odata.nextLink")
    return seen


def accounts_in_store(stack: DevstackProcess) -> int:
    return int(stack.stats("dataverse").get("records_per_table", {}).get("account", 0))


def dead_letters(stack: DevstackProcess) -> list[dict[str, Any]]:
    from azure.storage.blob import BlobServiceClient

    from shared.storage.dead_letters import DEAD_LETTER_CONTAINER

    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        DEAD_LETTER_CONTAINER
    )
    found = []
    for blob in container.list_blobs(name_starts_with="accounts/"):
        text = container.download_blob(blob.name).readall().decode()
        found += [json.loads(line) for line in text.splitlines() if line.strip()]
    return found


OUTAGE_SERVERS = {"DEVSTACK_KEY_VAULT_URL": ("keyvault", "Key Vault"), "DEVSTACK_ENTRA_URL": ("entra", "Entra")}


def injected_faults(stack: DevstackProcess, outages: tuple[str, ...]) -> dict[str, int]:
    """Faults Dataverse fired (``fault 429``, ``fault reset``...), the 401s it answered, and the 503s the
    servers taken down answered."""
    stats = stack.stats("dataverse")
    fired = {k.removeprefix("fault "): int(v) for k, v in stats.get("counters", {}).items() if k.startswith("fault ")}
    unauthorized = sum(int(codes.get("401", 0)) for codes in stats.get("requests", {}).values())
    if unauthorized:
        fired["401"] = unauthorized
    for setting in outages:
        server, label = OUTAGE_SERVERS[setting]
        requests_by_route = stack.stats(server).get("requests", {}).values()
        fired[f"{label} 503"] = sum(int(codes.get("503", 0)) for codes in requests_by_route)
    return fired


def outage(stack: DevstackProcess, setting: str, seconds: float) -> None:
    url = stack.env[setting]
    requests.post(
        f"{url}/_devstack/outage", json={"seconds": seconds}, verify=stack.env["DEVSTACK_CA_CERT"], timeout=10
    ).raise_for_status()


def run_until_succeeded(
    host_ref: list[HostProcess], stack: DevstackProcess, deadline: float, outcome: Outcome
) -> dict[str, Any]:
    """POST the run, as the timer fires it, until one succeeds; a 409 means a killed run's lease is live."""
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no successful run within {RUN_TIMEOUT_S} s: {outcome.failed_runs}")
        try:
            answer = host_ref[0].post("/api/sync/accounts/run", timeout=RUN_TIMEOUT_S)
        except requests.ConnectionError:
            time.sleep(RETRY_PAUSE_S)  # the host is being restarted
            continue
        if answer.status_code == 409:
            time.sleep(RETRY_PAUSE_S)
            continue
        try:
            report = answer.json()
        except ValueError:
            report = {"status": "failed", "error": f"HTTP {answer.status_code}: {answer.text[:120]!r}"}
        outcome.runs += 1
        if answer.status_code == 200 and report.get("status") == "succeeded":
            return dict(report)
        outcome.failed_runs.append(str(report.get("error") or report.get("status"))[:160])
        time.sleep(RETRY_PAUSE_S)


def webhook_round_trip(stack: DevstackProcess, host: HostProcess, prefix: str) -> bool:
    """Register a service endpoint on the host, change three accounts, find three processed events."""
    from azure.storage.blob import BlobServiceClient

    from tests.dataverse_api import api_for

    stack.control(
        "dataverse",
        {"webhooks": [{"url": f"{host.url}/api/webhooks/dataverse", "table": "account", "messages": ["Create"],
                       "auth": {"type": "WebhookKey", "value": host.function_key("dataverse_webhook")}}]},
    )  # fmt: skip
    api = api_for(stack)
    ids = set()
    for i in range(3):
        created = api("POST", "accounts", json={"name": f"after {i}", "accountnumber": f"{prefix}W{i}"})
        ids.add(created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))
    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "webhook-events"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            names = [b.name for b in container.list_blobs(name_starts_with="dataverse/account/")]
            if ids <= {n.split("/")[2] for n in names}:
                return True
        time.sleep(0.5)
    return False


def expiry_sweep(host: HostProcess) -> bool:
    if host.post("/admin/functions/expiry_sweep", json={}, timeout=60, key=host.master_key()).status_code != 202:
        return False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = host.get("/api/credentials")
        if answer.status_code == 200 and any(r["id"] == "probe:dataverse" for r in answer.json()["credentials"]):
            return True
        time.sleep(0.5)
    return False


def run_row(
    fault: Fault,
    rows: int,
    outage_s: float,
    workdir: Path,
    apply_env: Callable[[DevstackProcess], object] | None = None,
) -> Outcome:
    """One row of the matrix; ``apply_env`` puts the stack's settings in this process (tests pass
    their ``app_env`` fixture so the settings are undone afterwards)."""
    from azure.storage.blob import BlobServiceClient

    from tests.conftest import reset_all_workers

    started = time.monotonic()
    slug = "".join(c if c.isalnum() else "-" for c in fault.name.lower())[:40]
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", workdir / slug, f"matrix-{slug}", "--time-scale", "1"
    )
    hosts: list[HostProcess] = []
    try:
        if apply_env is None:
            os.environ.update(stack.app_settings())
            reset_all_workers()
        else:
            apply_env(stack)
        prefix = "M" + uuid.uuid4().hex[:3].upper()
        body, bad = erp_csv(rows, prefix)
        outcome = Outcome(fault.name, rows, rows - bad, dead_letters_expected=bad)
        container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
            "erp-import"
        )
        if not container.exists():
            container.create_container()
        container.upload_blob("accounts/matrix.csv", body, overwrite=True)
        baseline = accounts_in_store(stack)

        for setting in fault.outages:
            outage(stack, setting, outage_s)
        jobs_file = stack.directory / "sync_jobs.yaml"
        shipped = (ROOT / "sync_jobs.yaml").read_text()
        jobs_file.write_text(shipped.replace("batch_size: 1000", f"batch_size: {BATCH_SIZE}"))
        env = host_env(jobs_file)
        hosts.append(HostProcess(stack, stack.log_path.stem, env))  # cold: reads Key Vault and Entra first
        if fault.dataverse:
            stack.control("dataverse", fault.dataverse)

        stop_watch = threading.Event()
        watched = (fault, stack, hosts, env, baseline, rows, stop_watch, outcome.events)
        watcher = threading.Thread(target=_mid_run, args=watched, daemon=True)
        watcher.start()
        report = run_until_succeeded(hosts, stack, time.monotonic() + RUN_TIMEOUT_S, outcome)
        stop_watch.set()
        watcher.join(timeout=RUN_TIMEOUT_S)
        stack.control("dataverse", {"faults": [], "max_token_age_s": None})
        outcome.injected = injected_faults(stack, fault.outages)

        counts = account_counts(stack, prefix)
        expected_keys = {f"{prefix}{i:06}" for i in range(rows) if i % BAD_EVERY != BAD_EVERY - 1}
        outcome.present = len(counts)
        outcome.lost = len(expected_keys - set(counts))
        outcome.duplicated = sum(n - 1 for n in counts.values()) + len(set(counts) - expected_keys)
        letters = dead_letters(stack)
        lines = {(str(d.get("source", {}).get("line")), str(d.get("code"))) for d in letters}
        outcome.dead_letters = len({line for line, _ in lines})
        outcome.dead_letters_without_reason = sum(1 for d in letters if not d.get("reason") or not d.get("code"))
        outcome.totals_consistent = (
            report["rows_read"] == report["written"] + report["unchanged"] + report["dead_lettered"]
            and report["dead_lettered"] == bad
            and report["written"] + report["unchanged"] == rows - bad
        )
        outcome.throttles = int(report.get("throttles", 0))
        outcome.webhook_round_trip = webhook_round_trip(stack, hosts[-1], prefix)
        outcome.expiry_sweep = expiry_sweep(hosts[-1])
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        for host in hosts:
            host.stop()
        stack.stop()


def _mid_run(
    fault: Fault,
    stack: DevstackProcess,
    hosts: list[HostProcess],
    env: dict[str, str],
    baseline: int,
    rows: int,
    done: threading.Event,
    events: list[str],
) -> None:
    """At a third of the rows written: restart Azurite and/or SIGKILL the host and start a new one."""
    if not fault.mid_run:
        return
    while not done.is_set() and accounts_in_store(stack) - baseline < rows // 3:
        time.sleep(0.1)
    if done.is_set():
        return
    written = accounts_in_store(stack) - baseline
    if "azurite-restart" in fault.mid_run:
        os.kill(stack.proc.pid, signal.SIGUSR1)
        events.append(f"Azurite restarted at {written:,} rows written")
    if "host-kill" in fault.mid_run:
        hosts[0].kill()
        events.append(f"host SIGKILLed at {written:,} rows written")
        hosts[0] = HostProcess(stack, stack.log_path.stem, env)
        hosts.append(hosts[0])


def failures(failed_runs: list[str]) -> list[str]:
    """``3 runs failed first: <reason>``, once per distinct reason."""
    counted: dict[str, int] = {}
    for reason in failed_runs:
        counted[reason] = counted.get(reason, 0) + 1
    return [f"{n} run{'s' if n > 1 else ''} failed first: {reason}" for reason, n in counted.items()]


def fired(injected: dict[str, int]) -> str:
    return ", ".join(f"{n} × {kind}" for kind, n in sorted(injected.items())) or "-"


def render(outcomes: list[Outcome], command: str, seconds: float) -> str:
    lines = [
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{command}` ({seconds / 60:.1f} min,"
        f" {os.cpu_count()} CPUs).",
        "",
        "| fault | rows | expected | lost | duplicated | dead letters (expected) | runs | totals | webhook | expiry |"
        " faults fired | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        tick: Callable[[bool], str] = lambda ok: "✅" if ok else "❌"  # noqa: E731
        lines.append(
            f"| {o.fault} | {o.rows:,} | {o.expected:,} | {o.lost} | {o.duplicated} |"
            f" {o.dead_letters} ({o.dead_letters_expected}) | {o.runs} | {tick(o.totals_consistent)} |"
            f" {tick(o.webhook_round_trip)} | {tick(o.expiry_sweep)} | {fired(o.injected)} | {o.seconds:.0f} |"
        )
    notes = [
        f"- {o.fault}: {'; '.join([*o.events, *failures(o.failed_runs)])}"
        for o in outcomes
        if o.events or o.failed_runs
    ]
    return "\n".join([*lines, "", *notes])


def write_section(path: Path, text: str, start: str = MARKER_START, end: str = MARKER_END) -> None:
    """Replace what stands between the two markers of ``path`` (added at its end when missing)."""
    document = path.read_text()
    if start not in document:
        document += f"\n{start}\n{end}\n"
    head, _, rest = document.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--token-age-s", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", help="fault names (prefix match) to run; default all + combined")
    parser.add_argument("--write", help="rewrite the matrix section of this markdown file (RELIABILITY.md)")
    parser.add_argument("--dir", default=str(ROOT / ".devstack" / "matrix"))
    args = parser.parse_args(argv)
    single = faults(args.outage_s, args.token_age_s)
    rows_to_run = [*single[1:], combined(single[1:])] if not args.only else [
        f for f in [*single, combined(single[1:])] if any(f.name.startswith(o) for o in args.only)
    ]  # fmt: skip
    if not args.only:
        rows_to_run.insert(0, single[0])
    started = time.monotonic()
    outcomes = []
    for fault in rows_to_run:
        outcome = run_row(fault, args.rows, args.outage_s, Path(args.dir))
        print(json.dumps({**asdict(outcome), "ok": outcome.ok}), flush=True)
        outcomes.append(outcome)
    command = "python -m tests.reliability.matrix " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(outcomes, command.strip(), time.monotonic() - started)
    print(text)
    if args.write:
        write_section(Path(args.write), text)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
