"""The write planner against the emulator: exact landing under faults, and isolation of bad records."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.planner import WritePlanner
from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def planner_devstack(tmp_path_factory: pytest.TempPathFactory):
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("planner"), "planner",
        "--no-azurite", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    yield process
    process.stop()


def make_planner(stack: DevstackProcess) -> WritePlanner:
    client = DataverseClient(
        stack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(max_concurrency=4, verify=stack.env["REQUESTS_CA_BUNDLE"]),
    )
    return WritePlanner(client)


def store_names(stack: DevstackProcess, prefix: str) -> Counter[str]:
    api = api_for(stack)
    names: Counter[str] = Counter()
    link: str | None = f"{api.root}/accounts?$select=name,accountnumber&$filter=startswith(accountnumber,'{prefix}')"
    while link:
        page = api("GET", link, headers={"Prefer": "odata.maxpagesize=5000"}).json()
        names.update(f"{r['accountnumber']}={r['name']}" for r in page["value"])
        link = page.get("@odata.nextLink")
    return names


@pytest.mark.parametrize("strategy", ["bulk", "batch"])
def test_ten_thousand_upserts_land_exactly_under_faults(planner_devstack, app_env, caplog, strategy: str) -> None:
    app_env(planner_devstack)
    api = api_for(planner_devstack)
    prefix = f"T{uuid.uuid4().hex[:5]}"
    count = 10_000 if strategy == "bulk" else 2_000
    records = ({"accountnumber": f"{prefix}{i:05}", "name": f"acct {i}"} for i in range(count))
    api.control({"faults": [
        {"kind": "429", "code": "0x80072322", "route": "POST ", "rate": 0.03, "retry_after_s": 1},
        {"kind": "503", "route": "POST ", "rate": 0.01},
    ]})  # fmt: skip
    # Mid-run, every token issued before now is rejected: the client must refresh once and go on.
    # (Not a maximum age: under load a fresh token could outlive a 1 s limit before its first use.)
    expire = threading.Timer(1.5, lambda: api.control({"reject_tokens_issued_before_now": True}))
    expire.start()
    try:
        run = make_planner(planner_devstack).write(
            "account",
            "accounts",
            records,
            "upsert",
            key=("accountnumber",),
            strategy=strategy,
            batch_size=50 if strategy == "bulk" else 20,
        )
        results = list(run)
    finally:
        expire.cancel()
        api.control({"faults": [], "max_token_age_s": None, "reject_tokens_issued_before_now": False})
    assert run.summary.total == count, run.summary
    assert run.summary.failed == 0, run.summary
    assert sorted(r.index for r in results) == list(range(count))
    stored = store_names(planner_devstack, prefix)
    assert len(stored) == count  # nothing lost
    assert max(stored.values()) == 1  # nothing duplicated
    assert stored[f"{prefix}{count - 1:05}=acct {count - 1}"] == 1
    stats = api.stats()["counters"]
    assert stats.get("fault 429", 0) > 0  # the faults really fired
    assert stats.get("fault 503", 0) > 0
    assert any("dataverse_token_refreshed" in r.getMessage() for r in caplog.records)  # the token expired mid-run


def test_three_bad_records_among_997_are_isolated(planner_devstack, app_env) -> None:
    app_env(planner_devstack)
    prefix = f"B{uuid.uuid4().hex[:5]}"
    bad = {10, 500, 990}
    records = [
        {"accountnumber": f"{prefix}{i:04}", "name": ("x" * 161) if i in bad else f"ok {i}"} for i in range(1000)
    ]
    run = make_planner(planner_devstack).write(
        "account", "accounts", records, "upsert", key=("accountnumber",), strategy="bulk", batch_size=1000
    )
    results = list(run)
    failed = sorted((r.index, r.code) for r in results if r.status == "failed")
    assert failed == [(10, "0x80044331"), (500, "0x80044331"), (990, "0x80044331")]
    assert run.summary.ok == 997
    assert run.summary.isolated_chunks == 1
    assert len(store_names(planner_devstack, prefix)) == 997


def test_duplicates_collapse_and_auto_falls_back_to_batch(planner_devstack, app_env) -> None:
    app_env(planner_devstack)
    prefix = f"D{uuid.uuid4().hex[:5]}"
    records = [
        {"accountnumber": f"{prefix}1", "name": "first"},
        {"accountnumber": f"{prefix}1", "name": "second"},
        {"name": "no key"},
    ]
    run = make_planner(planner_devstack).write("account", "accounts", records, "upsert", key=("accountnumber",))
    statuses = sorted((r.index, r.status) for r in run)
    assert statuses == [(0, "duplicate"), (1, "ok"), (2, "failed")]
    assert store_names(planner_devstack, prefix) == Counter({f"{prefix}1=second": 1})
    # contact has no bulk support in the scenario: auto finds out and uses $batch.
    planner = make_planner(planner_devstack)
    email = f"{uuid.uuid4().hex[:6]}@example.com"
    contact_run = planner.write(
        "contact", "contacts", [{"emailaddress1": email, "lastname": "Doe"}], "upsert", key=("emailaddress1",)
    )
    assert [r.status for r in contact_run] == ["ok"]
    assert planner.supports_bulk("contact") is False
    assert contact_run.summary.strategy == "auto (batch)"
