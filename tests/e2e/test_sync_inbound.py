"""Inbound sync on devstack + Azurite: rows land exactly, bad rows are dead-lettered with their reason,
a second run sends only the changed rows, and an overlapping run is skipped."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator

import pytest

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.storage import Storage
from shared.sync.engine import SyncContext, run_inbound
from shared.sync.jobs import InboundJob, load_jobs
from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.e2e

HEADER = ["CustomerNo", "Name", "Phone", "Employees", "Revenue", "CreditHold", "Category", "HoldSince"]
BAD = {
    7: ("HoldSince", "2025/13/45", "BadDate"),
    8: ("CustomerNo", "", "MissingKey"),
    9: ("Category", "Platinum", "UnknownOptionLabel"),
    10: ("Name", "x" * 200, "TooLong"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("sync"),
        "sync",
        "--memory",
        "--time-scale",
        "0.01",
    )
    yield process
    process.stop()


def rows(prefix: str, count: int, *, changed: set[int] = frozenset()) -> list[list[str]]:  # type: ignore[assignment]
    out = []
    for i in range(count):
        row = [
            f"{prefix}{i:05}",
            f"Company {i}" + (" (renamed)" if i in changed else ""),
            f"+49 {i}",
            str(i % 500),
            f"{i},50",
            "no",
            "Standard",
            "01.02.2025",
        ]
        if i in BAD:
            column, value, _ = BAD[i]
            row[HEADER.index(column)] = value
        out.append(row)
    return out


def upload(storage: Storage, name: str, data: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(HEADER)
    writer.writerows(data)
    container = storage.blob_service().get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    container.upload_blob(name, buffer.getvalue().encode("utf-8-sig"), overwrite=True)


def context(stack: DevstackProcess) -> SyncContext:
    client = DataverseClient(
        stack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(max_concurrency=4, verify=stack.env["REQUESTS_CA_BUNDLE"]),
    )
    return SyncContext(Storage(stack.env["AzureWebJobsStorage"]), client)


def accounts_job(prefix: str) -> InboundJob:
    job = load_jobs(ROOT / "sync_jobs.yaml")["accounts"]
    assert isinstance(job, InboundJob)
    return job.model_copy(update={"source": job.source.model_copy(update={"prefix": f"{prefix}/"})})


def store(stack: DevstackProcess, prefix: str) -> dict[str, str]:
    api = api_for(stack)
    found: dict[str, str] = {}
    link: str | None = f"{api.root}/accounts?$select=accountnumber,name&$filter=startswith(accountnumber,'{prefix}')"
    while link:
        page = api("GET", link).json()
        found.update({r["accountnumber"]: r["name"] for r in page["value"]})
        link = page.get("@odata.nextLink")
    return found


def test_first_run_lands_exactly_and_dead_letters_bad_rows_then_second_run_sends_only_changes(stack, app_env) -> None:
    app_env(stack)
    prefix = f"S{uuid.uuid4().hex[:4]}"
    ctx = context(stack)
    count = 2000
    upload(ctx.storage, f"{prefix}/accounts-1.csv", rows(prefix, count))
    job = accounts_job(prefix)

    first = run_inbound(f"accounts-{prefix}", job, ctx)
    assert first.status == "succeeded"
    expected = {f"{prefix}{i:05}": f"Company {i}" for i in range(count) if i not in BAD}
    assert store(stack, prefix) == expected  # every valid row, exactly
    assert (first.rows_read, first.written, first.dead_lettered, first.failed) == (count, count - len(BAD), len(BAD), 0)
    letters = sorted(
        (d["source"]["line"], d["code"]) for _, d in ctx.storage.read_dead_letters(f"accounts-{prefix}", first.run_id)
    )
    assert letters == sorted((i + 1, code) for i, (_, _, code) in BAD.items())

    # Same file again: skipped (processed, same ETag). Changed file: only changed rows are sent.
    assert run_inbound(f"accounts-{prefix}", job, ctx).files_skipped == 1
    changed = set(range(0, count, 20))  # 5 %
    upload(ctx.storage, f"{prefix}/accounts-1.csv", rows(prefix, count, changed=changed))
    ops_before = api_for(stack).stats()["counters"]["entitlement records"]
    second = run_inbound(f"accounts-{prefix}", job, ctx)
    sent = api_for(stack).stats()["counters"]["entitlement records"] - ops_before
    valid_changed = {i for i in changed if i not in BAD}
    assert second.written == len(valid_changed)
    assert second.unchanged == count - len(BAD) - len(valid_changed)
    assert sent == len(valid_changed)  # the emulator saw only the changed records
    expected.update({f"{prefix}{i:05}": f"Company {i} (renamed)" for i in valid_changed})
    assert store(stack, prefix) == expected


def test_an_overlapping_run_is_skipped(stack, app_env) -> None:
    app_env(stack)
    ctx = context(stack)
    held = ctx.storage.lease("accounts-overlap")
    assert held is not None
    try:
        report = run_inbound("accounts-overlap", accounts_job("overlap"), ctx)
        assert report.status == "skipped"
    finally:
        held.release()


def test_dead_letters_replay_after_the_fix(stack, app_env) -> None:
    from shared.sync.engine import replay_dead_letters

    app_env(stack)
    ctx = context(stack)
    tag = uuid.uuid4().hex[:5]
    contacts = load_jobs(ROOT / "sync_jobs.yaml")["contacts"]
    assert isinstance(contacts, InboundJob)
    contacts = contacts.model_copy(update={"source": contacts.source.model_copy(update={"prefix": f"c{tag}/"})})
    text = "Email;FirstName;LastName;CustomerNo\n" + "".join(
        f"p{i}.{tag}@example.com;P;Person {i};ACC{tag}\n" for i in range(3)
    )
    container = ctx.storage.blob_service().get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"c{tag}/contacts.csv", text.encode(), overwrite=True)

    first = run_inbound(f"contacts-{tag}", contacts, ctx)  # the parent account is not there yet
    assert (first.written, first.dead_lettered) == (0, 3)
    codes = {d["code"] for _, d in ctx.storage.read_dead_letters(f"contacts-{tag}")}
    assert codes == {"0x80060891"}  # Dataverse: no account with that key

    ctx.client.create("accounts", {"name": "Parent", "accountnumber": f"ACC{tag}"})  # the fix
    replay = replay_dead_letters(f"contacts-{tag}", contacts, ctx)
    assert (replay.written, replay.dead_lettered, replay.files) == (3, 0, 1)
    assert list(ctx.storage.read_dead_letters(f"contacts-{tag}")) == []  # replayed letters are gone
    assert replay_dead_letters(f"contacts-{tag}", contacts, ctx).written == 0  # nothing replays twice
    api = api_for(stack)
    rows = api(
        "GET",
        "contacts",
        params={"$select": "_parentcustomerid_value", "$filter": f"endswith(emailaddress1,'.{tag}@example.com')"},
    ).json()["value"]
    assert len(rows) == 3
    assert all(r["_parentcustomerid_value"] for r in rows)
