"""First runs of each capability, shown by ``make run`` and checked by ``make demo``.

A capability registers one step with :func:`demo_step`; the step gets the environment devstack
wrote (settings, URLs, host key) and returns a one-line summary, raising on failure.

Every first run goes through the local host and its worker process, as a caller in Azure would: devstack
seeds (an ERP export into Azurite) and watches (the emulators' counters, ``devstack.progress``), but never
imports an engine of the app to run it in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

DemoStep = Callable[[dict[str, str]], str]
STEPS: list[tuple[str, DemoStep]] = []
STEP_TIMEOUT_S = 120
# The webhook step fails when its counters stand still this long (a delivery or an event was lost), not
# after a rate floor: on 2 cores the round trip slows as Azurite fills (35 events/s at first, 15 at 10,000).
WEBHOOK_STALL_S = 60
WEBHOOK_MAX_S = 20 * 60
WEBHOOK_POLL_S = 1.0

# What the sync step wrote, for the webhook step after it: each account write fired one service-endpoint call.
_sync_results: dict[str, Any] = {}


def demo_step(name: str) -> Callable[[DemoStep], DemoStep]:
    def register(step: DemoStep) -> DemoStep:
        STEPS.append((name, step))
        return step

    return register


@dataclass
class Outcome:
    name: str
    ok: bool
    summary: str
    seconds: float


def run_steps(env: dict[str, str]) -> list[Outcome]:
    outcomes = []
    for name, step in STEPS:
        started = time.monotonic()
        try:
            summary, ok = step(env), True
        except Exception as exc:  # a demo step's failure is reported, not raised
            summary, ok = f"{type(exc).__name__}: {exc}", False
        outcomes.append(Outcome(name, ok, summary, time.monotonic() - started))
    return outcomes


def render(outcomes: list[Outcome]) -> str:
    width = max((len(o.name) for o in outcomes), default=10)
    lines = ["", "first runs:", ""]
    for o in outcomes:
        lines.append(f"  {'✅' if o.ok else '❌'} {o.name:<{width}}  {o.seconds:6.2f} s  {o.summary}")
    passed = sum(o.ok for o in outcomes)
    lines += ["", f"{passed}/{len(outcomes)} passed"]
    return "\n".join(lines)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback URLs from devstack
    try:
        with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@demo_step("identity doctor")
def identity_doctor(env: dict[str, str]) -> str:
    """The doctor in a fresh interpreter, as a Functions worker would see the settings."""
    completed = subprocess.run(
        [sys.executable, "-m", "shared.identity.doctor"], env={**os.environ, **env}, timeout=STEP_TIMEOUT_S, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError("the doctor reported a failing step (see its table above)")
    return "every step of the identity chain passed, through WhoAmI"


@demo_step("functions host")
def functions_host(env: dict[str, str]) -> str:
    """An HTTP round trip through the local host: liveness, then the doctor with the host key."""
    base = env.get("FUNCTIONS_BASE_URL")
    if not base:
        raise RuntimeError("the local Functions host is not running")
    status, _ = _get(f"{base}/api/health/live")
    if status != 200:
        raise RuntimeError(f"GET /api/health/live answered {status}")
    status, _ = _get(f"{base}/api/health/doctor")
    if status != 401:
        raise RuntimeError(f"GET /api/health/doctor without a key answered {status}, expected 401")
    status, body = _get(f"{base}/api/health/doctor", {"x-functions-key": env["FUNCTIONS_HOST_KEY"]})
    report = json.loads(body)
    if status != 200 or not report.get("ok"):
        raise RuntimeError(f"GET /api/health/doctor answered {status}")
    return f"/api/health/live 200, /api/health/doctor 401 without key, 200 with it ({len(report['steps'])} steps ok)"


# A sync run through the host answers when the job is done (minutes for the default seed). The wait stays
# below host.json's functionTimeout (10 min), after which the host would fail the invocation anyway.
SYNC_RUN_TIMEOUT_S = 9 * 60
SYNC_REPORT_POLL_S = 2.0
ERP_EXPORT_BLOB = "erp-export.csv"


def _blob_service(env: dict[str, str]) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])


def _csv_sources(names: tuple[str, ...]) -> dict[str, tuple[str, str, str]]:
    """(container, prefix, Dataverse table) of each job, from the validated jobs file (the models only: the
    engine runs in the host's worker, never in devstack's process)."""
    from shared.sync.jobs import CsvSource, InboundJob
    from shared.sync.jobs_file import jobs

    defined = jobs()
    sources = {}
    for name in names:
        job = defined[name]
        if not isinstance(job, InboundJob) or not isinstance(job.source, CsvSource):
            raise RuntimeError(f"the sync job {name!r} is not an inbound blob CSV job")
        sources[name] = (job.source.container, job.source.prefix, job.table)
    return sources


def _post_json(url: str, key: str, timeout_s: float) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=b"", method="POST", headers={"x-functions-key": key})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the local host
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, body = int(exc.code), exc.read()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {"error": body[:200].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {"answer": answer}


def _stored_report(env: dict[str, str], name: str, seeded_at: str, other_than: str = "") -> dict[str, Any] | None:
    """The newest stored report of a run of ``name`` that started after the seed landed (``GET /api/sync/runs``)."""
    status, body = _get(
        f"{env['FUNCTIONS_BASE_URL']}/api/sync/runs?limit=50", {"x-functions-key": env["FUNCTIONS_HOST_KEY"]}
    )
    runs = json.loads(body) if status == 200 else []
    found = [r for r in runs if r.get("job") == name and r.get("run_id") != other_than]
    found = [r for r in found if str(r.get("started_at", "")) >= seeded_at and r.get("status") != "skipped"]
    return dict(found[0]) if found else None


def _run_job(env: dict[str, str], name: str, seeded_at: str) -> dict[str, Any]:
    """``POST /api/sync/<job>/run``: the job runs in the host's worker and the answer is its report.

    The job's timer (every quarter hour) may fire just after the seed landed. Its run then holds the job (409)
    and reads the seed: the stored report of that run (``GET /api/sync/runs``) is the one that counts. A run
    that started before the seed landed is waited out, then the job is run again."""
    url = f"{env['FUNCTIONS_BASE_URL']}/api/sync/{name}/run"
    deadline = time.monotonic() + SYNC_RUN_TIMEOUT_S
    while True:
        status, report = _post_json(url, env["FUNCTIONS_HOST_KEY"], SYNC_RUN_TIMEOUT_S)
        if status == 200 and not report.get("files") and report.get("files_skipped"):
            # The seed was already processed: by a timer run between our seed and our call.
            return _stored_report(env, name, seeded_at, other_than=str(report.get("run_id"))) or report
        if status != 409:
            break
        stored = _stored_report(env, name, seeded_at)
        if stored is not None:
            return stored
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: another run held the job for {SYNC_RUN_TIMEOUT_S} s")
        time.sleep(SYNC_REPORT_POLL_S)
    if status != 200:
        raise RuntimeError(f"POST /api/sync/{name}/run answered {status}: {report.get('error') or report}")
    return report


def _landing(stats: Any, table: str, progress: Any, task: Any) -> Callable[[], None]:
    """A poll for one run's bar: records in ``table`` and 429s answered, counted from now on."""
    from devstack.progress import throttles

    before = stats.snapshot()
    records_before, throttles_before = int(before.get("records_per_table", {}).get(table, 0)), throttles(before)

    def poll() -> None:
        now = stats.snapshot()
        landed = int(now.get("records_per_table", {}).get(table, 0)) - records_before
        progress.update(task, completed=max(0, landed), throttled=throttles(now) - throttles_before)

    return poll


@demo_step("scheduled sync")
def scheduled_sync(env: dict[str, str]) -> str:
    """Seed an ERP export into Azurite, run the accounts and contacts jobs once through the host, check
    every count. The bars count the records the Dataverse emulator holds; the table is the runs' reports."""
    from rich.console import Console
    from rich.table import Table

    from devstack.progress import DataverseStats, bar, in_thread, poll_until_done
    from devstack.seed import erp_export

    accounts = int(env.get("DEVSTACK_SEED_ACCOUNTS", "10000"))
    seed, accounts_csv, contacts_csv = erp_export(
        accounts=accounts, contacts=3 * accounts, bad=max(4, accounts * 3 // 100)
    )
    expected = {
        "accounts": (seed.valid_accounts, sum(seed.bad_accounts.values())),
        "contacts": (seed.valid_contacts, seed.orphan_contacts),
    }
    uploads = {"accounts": accounts_csv, "contacts": contacts_csv}
    sources = _csv_sources(tuple(uploads))
    blobs = _blob_service(env)
    stats = DataverseStats(env)
    console = Console()
    reports: dict[str, dict[str, Any]] = {}
    _sync_results["started"] = datetime.now(UTC) - timedelta(seconds=1)  # blob times have 1 s resolution
    with bar(console, extra="{task.fields[throttled]} × 429") as progress:
        for name, data in uploads.items():
            container_name, prefix, table = sources[name]
            container = blobs.get_container_client(container_name)
            if not container.exists():
                container.create_container()
            # Each file lands just before its own run: a contacts file waiting in Azurite while accounts
            # run could be picked up by the contacts timer, ahead of the accounts its lookups need.
            seeded_at = datetime.now(UTC).isoformat()
            container.upload_blob(f"{prefix}{ERP_EXPORT_BLOB}", data, overwrite=True)
            task = progress.add_task(name, total=expected[name][0], throttled=0)
            update = _landing(stats, table, progress, task)
            with in_thread(partial(_run_job, env, name, seeded_at)) as run:
                poll_until_done(run, update)
                reports[name] = run.result()
            progress.update(task, completed=int(reports[name].get("written", 0)))
    table_view = Table(title="first sync run")
    for column in ("job", "rows", "written", "dead-lettered", "unchanged", "seconds", "records/s", "429s"):
        table_view.add_column(column, justify="right" if column != "job" else "left")
    for name, r in reports.items():
        table_view.add_row(
            name,
            str(r.get("rows_read", 0)),
            str(r.get("written", 0)),
            str(r.get("dead_lettered", 0)),
            str(r.get("unchanged", 0)),
            f"{float(r.get('duration_s', 0)):.1f}",
            f"{float(r.get('records_per_s', 0)):.0f}",
            str(r.get("throttles", 0)),
        )
    Console(width=max(console.width, 100)).print(table_view)  # eight columns: no header cut short
    _sync_results["accounts_written"] = int(reports["accounts"].get("written", 0))
    _sync_results["finished"] = time.monotonic()
    for name, (written, dead) in expected.items():
        r = reports[name]
        if r.get("status") != "succeeded":
            raise RuntimeError(f"{name}: the run ended {r.get('status')!r}: {r.get('error') or 'no error given'}")
        got = (int(r.get("written", 0)), int(r.get("dead_lettered", 0)))
        if got != (written, dead):
            raise RuntimeError(f"{name}: wrote {got[0]} and dead-lettered {got[1]}, expected {written} and {dead}")
    return (
        f"{seed.valid_accounts:,} accounts and {seed.valid_contacts:,} contacts landed;"
        f" {sum(seed.bad_accounts.values())} bad accounts and {seed.orphan_contacts} orphaned contacts dead-lettered"
    )


@demo_step("webhook round trip")
def webhook_round_trip(env: dict[str, str]) -> str:
    """The sync's account writes fired the emulator's service endpoint at the host's receiver; wait until the
    queue processor has turned every one into its blob, and count each stage."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    from devstack.progress import DataverseStats, bar, counter

    written = _sync_results.get("accounts_written")
    if written is None:
        raise RuntimeError("the scheduled sync step did not run, so no webhook was fired")
    started: datetime = _sync_results["started"]
    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], "webhook-events")
    stats = DataverseStats(env)

    def acknowledged() -> int:
        return counter(stats.snapshot(), "webhook deliveries 202")

    def pending() -> int:
        try:  # a message is counted until the processor deletes it, after its effect
            return int(queue.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0

    # Cheap probes while waiting (two counters); the effects are listed once at the end. Listing ~10,000
    # blobs every second would cost more than the processing it waits for.
    begun = time.monotonic()
    with bar() as progress:
        task = progress.add_task("webhooks", total=written)
        acked, waiting = acknowledged(), pending()
        seen, moved = (acked, waiting), begun
        while acked < written or waiting:
            now = time.monotonic()
            if (acked, waiting) != seen:
                seen, moved = (acked, waiting), now
            elif now - moved > WEBHOOK_STALL_S or now - begun > WEBHOOK_MAX_S:
                break
            progress.update(task, completed=max(0, acked - waiting))
            time.sleep(WEBHOOK_POLL_S)
            acked, waiting = acknowledged(), pending()
        progress.update(task, completed=max(0, acked - waiting))
    after_sync_s = time.monotonic() - _sync_results["finished"]
    container = _blob_service(env).get_container_client("webhook-events")
    blobs = container.list_blobs(name_starts_with="dataverse/account/") if container.exists() else []
    count = sum(1 for blob in blobs if blob.last_modified >= started)
    if count != written:
        raise RuntimeError(
            f"{written:,} account writes, {acked:,} deliveries acknowledged, but {count:,} events processed"
        )
    return (
        f"{written:,} account writes -> {acked:,} deliveries acknowledged (202) -> {count:,} events"
        f" processed into blob container webhook-events, the last {after_sync_s:.1f} s after the sync"
    )


def _master_key(env: dict[str, str]) -> str:
    """Read from the host's key file, never put in the environment: the app and the doctor must not see it."""
    return str(json.loads(Path(env["DEVSTACK_HOST_KEYS"]).read_text())["masterKey"])


@demo_step("credential expiry")
def credential_expiry(env: dict[str, str]) -> str:
    """One sweep through the host (as the daily timer runs it), then the credential table from the API."""
    from rich.console import Console
    from rich.table import Table

    base, key = env["FUNCTIONS_BASE_URL"], env["FUNCTIONS_HOST_KEY"]
    request = urllib.request.Request(  # noqa: S310 - the local host
        f"{base}/admin/functions/expiry_sweep", data=b"{}", method="POST",
        headers={"x-functions-key": _master_key(env), "Content-Type": "application/json"},  # /admin/* takes only it
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:  # noqa: S310
        if response.status != 202:
            raise RuntimeError(f"POST /admin/functions/expiry_sweep answered {response.status}")
    deadline = time.monotonic() + STEP_TIMEOUT_S
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # the admin call is asynchronous; the table fills when the sweep ran
        status, body = _get(f"{base}/api/credentials", {"x-functions-key": key})
        rows = json.loads(body)["credentials"] if status == 200 else []
        if any(r["id"] == "probe:dataverse" for r in rows):
            break
        time.sleep(0.5)
    if not rows:
        raise RuntimeError("GET /api/credentials listed nothing after the sweep")
    short = {"keyvault-secret": "kv secret", "keyvault-certificate": "kv cert", "entra-password": "entra secret",
             "entra-certificate": "entra cert", "probe": "live probe"}  # fmt: skip
    table = Table(title="credentials")
    for column in ("name", "source", "expires", "days left", "state", "last alert"):
        table.add_column(column, justify="right" if column == "days left" else "left", no_wrap=column != "name")
    for r in rows:
        expires = str(r["expires_on"] or "-")[:10]
        days = "-" if r["days_left"] is None else f"{r['days_left']:.0f}"
        source = short.get(str(r["source"]), str(r["source"]))
        table.add_row(str(r["name"]), source, expires, days, str(r["state"]), str(r["last_alert"] or "-"))
    Console(width=max(Console().width, 100)).print(table)
    alerting = [f"{r['name']} {r['last_alert']}" for r in rows if r["last_alert"]]
    with urllib.request.urlopen(f"{env['DEVSTACK_ALERTS_URL']}/_devstack/alerts", timeout=30) as response:  # noqa: S310
        delivered = len(json.loads(response.read())["alerts"])
    return (
        f"{len(rows)} credentials swept (Key Vault, Entra, live probe); {len(alerting)} alerting"
        f" ({', '.join(alerting) or 'none'}); {delivered} messages"
        " in the alert sink (Teams card, Slack, JSON)"
    )
