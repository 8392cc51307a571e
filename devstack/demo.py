"""First runs of each capability, shown by ``make run`` and checked by ``make demo``.

A capability registers one step with :func:`demo_step`; the step gets the environment devstack
wrote (settings, URLs, host key) and returns a one-line summary, raising on failure. Later issues add
their first run here: a sync, a webhook round trip, an expiry sweep.
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
from pathlib import Path
from typing import Any

DemoStep = Callable[[dict[str, str]], str]
STEPS: list[tuple[str, DemoStep]] = []
STEP_TIMEOUT_S = 120
WEBHOOK_DRAIN_MIN_S = 60
WEBHOOK_DRAIN_RATE_PER_S = 20  # a floor far below what the local host processes, so only a real loss times out
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


def _advance(bar: Any, task: Any) -> Callable[[int], None]:
    return lambda n: bar.advance(task, n)


@demo_step("scheduled sync")
def scheduled_sync(env: dict[str, str]) -> str:
    """Seed an ERP export into Azurite, run the accounts and contacts jobs once, check every count."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from devstack.seed import erp_export
    from shared.dataverse.client import DataverseClient
    from shared.identity.worker import token_provider
    from shared.sync.engine import SyncContext, run_inbound
    from shared.sync.jobs import CsvSource, InboundJob
    from shared.sync.storage import SyncStorage
    from shared.sync.worker import jobs

    accounts = int(env.get("DEVSTACK_SEED_ACCOUNTS", "10000"))
    seed, accounts_csv, contacts_csv = erp_export(
        accounts=accounts, contacts=3 * accounts, bad=max(4, accounts * 3 // 100)
    )
    storage = SyncStorage(env["AzureWebJobsStorage"])
    container = storage.blob_service().get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    defined = jobs()
    uploads = {"accounts": accounts_csv, "contacts": contacts_csv}
    for name, data in uploads.items():
        job = defined[name]
        assert isinstance(job, InboundJob)
        assert isinstance(job.source, CsvSource)
        container.upload_blob(f"{job.source.prefix}erp-export.csv", data, overwrite=True)
    ctx = SyncContext(storage, DataverseClient(env["DATAVERSE_URL"], token_provider()))
    _sync_results["started"] = datetime.now(UTC) - timedelta(seconds=1)  # blob times have 1 s resolution
    console = Console()
    reports = {}
    with Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        for name, total in (("accounts", seed.accounts), ("contacts", seed.contacts)):
            task = bar.add_task(name, total=total)
            job = defined[name]
            assert isinstance(job, InboundJob)
            reports[name] = run_inbound(name, job, ctx, progress=_advance(bar, task))
    table = Table(title="first sync run")
    for column in ("job", "rows", "written", "dead-lettered", "unchanged", "seconds", "records/s", "429s"):
        table.add_column(column, justify="right" if column != "job" else "left")
    for name, r in reports.items():
        table.add_row(
            name,
            str(r.rows_read),
            str(r.written),
            str(r.dead_lettered),
            str(r.unchanged),
            f"{r.duration_s:.1f}",
            f"{r.records_per_s:.0f}",
            str(r.throttles),
        )
    console.print(table)
    expected = {
        "accounts": (seed.valid_accounts, sum(seed.bad_accounts.values())),
        "contacts": (seed.valid_contacts, seed.orphan_contacts),
    }
    _sync_results["accounts_written"] = reports["accounts"].written
    _sync_results["finished"] = time.monotonic()
    for name, (written, dead) in expected.items():
        got = (reports[name].written, reports[name].dead_lettered)
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
    import ssl

    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.sync.storage import SyncStorage

    written = _sync_results.get("accounts_written")
    if written is None:
        raise RuntimeError("the scheduled sync step did not run, so no webhook was fired")
    started: datetime = _sync_results["started"]
    storage = SyncStorage(env["AzureWebJobsStorage"])
    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], "webhook-events")
    context = ssl.create_default_context(cafile=env["DEVSTACK_CA_CERT"])

    def acknowledged() -> int:
        stats_url = f"{env['DEVSTACK_DATAVERSE_URL']}/_devstack/stats"
        with urllib.request.urlopen(stats_url, timeout=STEP_TIMEOUT_S, context=context) as response:  # noqa: S310
            return int(json.loads(response.read())["counters"].get("webhook deliveries 202", 0))

    def pending() -> int:
        try:  # a message is counted until the processor deletes it, after its effect
            return int(queue.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0

    # Cheap probes while waiting (two counters); the effects are listed once at the end. Listing ~10,000
    # blobs every second would cost the single devstack process more than the processing it waits for.
    deadline = time.monotonic() + max(WEBHOOK_DRAIN_MIN_S, written / WEBHOOK_DRAIN_RATE_PER_S)
    with Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console()
    ) as bar:
        task = bar.add_task("webhooks", total=written)
        acked, waiting = acknowledged(), pending()
        while (acked < written or waiting) and time.monotonic() < deadline:
            bar.update(task, completed=max(0, acked - waiting))
            time.sleep(WEBHOOK_POLL_S)
            acked, waiting = acknowledged(), pending()
        bar.update(task, completed=max(0, acked - waiting))
    after_sync_s = time.monotonic() - _sync_results["finished"]
    container = storage.blob_service().get_container_client("webhook-events")
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
