"""The webhook reconciler (shared.webhooks.reconciler) over in-memory fakes: a Dataverse client serving
change-tracking pages, an ordering guard, and storage recording what was enqueued."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.dataverse.schema import TableMetadata
from shared.errors import DataverseError
from shared.webhooks.processor import EVENT_QUEUE
from shared.webhooks.reconciler import (
    LOG_PARTITION,
    RECONCILE_TABLE,
    AppliedState,
    ReconcileLog,
    Reconciler,
    webhook_attributes,
)
from shared.webhooks.routes import RoutesFile
from tests.fakes.event_storage import FakeEventStorage

pytestmark = pytest.mark.unit

ROOT = "https://org.example.com/api/data/v9.2"
ROUTES = RoutesFile.model_validate(
    {
        "routes": [
            {"match": {"source": "dataverse", "table": "account"}, "handler": {"kind": "blob", "container": "c"}},
            {"match": {"source": "dataverse"}, "handler": {"kind": "blob", "container": "all"}},
            {"match": {"source": "erp"}, "handler": {"kind": "blob", "container": "erp"}},
        ]
    }
)


def gid() -> str:
    return str(uuid.uuid4())


# -- fakes ---------------------------------------------------------------------------------------------------
@dataclass
class _Response:
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    status_code: int = 200

    def json(self) -> Any:
        return self.body


class FakeChangeTracking:
    """A Dataverse environment's ``account`` table with change tracking, as the reconciler reads it: the
    metadata reads, an initial read and delta reads, ``page_size`` rows a page. A delta link names the
    change count it was issued at; ``expire()`` makes every delta link issued so far answer ExpiredVersionStamp."""

    def __init__(self, page_size: int = 2) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []  # ("changed"|"deleted", id) in change order
        self.page_size = page_size
        self.version = 1000
        self.expired_before = 0
        self.requests: list[str] = []

    # writes (what users do in Dataverse)
    def write(self, record_id: str | None = None, **columns: Any) -> tuple[str, int]:
        record_id = record_id or gid()
        self.version += 1
        row = {**self.rows.get(record_id, {}), **columns, "accountid": record_id, "versionnumber": self.version}
        self.rows[record_id] = row
        self.log.append(("changed", record_id))
        return record_id, self.version

    def delete(self, record_id: str) -> None:
        self.rows.pop(record_id, None)
        self.log.append(("deleted", record_id))

    def expire(self) -> None:
        self.expired_before = len(self.log)  # every link issued before the latest change

    # the client's request path
    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, **kwargs: Any) -> _Response:
        self.requests.append(path)
        assert method == "GET"
        if path.startswith("EntityDefinitions(LogicalName='account')"):
            return _Response({"LogicalName": "account", "EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"})
        assert "odata.track-changes" in kwargs["headers"]["Prefer"]
        match = re.fullmatch(rf"(?:{re.escape(ROOT)}/)?accounts(?:\?(.*))?", path)
        assert match, path
        query = dict(p.split("=", 1) for p in (match[1] or "").split("&") if p)
        if "delta" in query and int(query["delta"]) < self.expired_before:
            raise DataverseError(400, "0x80044352", "Version stamp associated with the client has expired.")
        entries = self._delta(int(query["delta"])) if "delta" in query else [self._row(r) for r in self.rows.values()]
        start = int(query.get("skip", 0))
        page = entries[start : start + self.page_size]
        body: dict[str, Any] = {"value": page}
        if start + self.page_size < len(entries):
            base = f"delta={query['delta']}&" if "delta" in query else ""
            body["@odata.nextLink"] = f"{ROOT}/accounts?{base}skip={start + self.page_size}&at={len(self.log)}"
        else:
            body["@odata.deltaLink"] = f"{ROOT}/accounts?delta={int(query.get('at', len(self.log)))}"
        return _Response(body, {"Preference-Applied": "odata.track-changes"})

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"@odata.etag": f'W/"{row["versionnumber"]}"', **row}

    def _delta(self, since: int) -> list[dict[str, Any]]:
        latest: dict[str, str] = {}
        for kind, record_id in self.log[since:]:
            latest.pop(record_id, None)
            latest[record_id] = kind
        changed = [self._row(self.rows[i]) for i, k in latest.items() if k == "changed" and i in self.rows]
        deleted = [
            {"@odata.context": f"{ROOT}/$metadata#accounts/$deletedEntity", "id": i, "reason": "deleted"}
            for i, k in latest.items()
            if k == "deleted"
        ]
        return changed + deleted


class FakeApplied:
    """The ordering guard: what the processors applied, by (table, id)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], AppliedState] = {}
        self.asked: list[list[str]] = []

    def applied(self, source: str, table: str, record_ids: Sequence[str]) -> Mapping[str, AppliedState]:
        assert source == "dataverse"
        self.asked.append(list(record_ids))
        return {i: self.states[(table, i)] for i in record_ids if (table, i) in self.states}


class _Lease:
    def __init__(self, owner: ReconcileStorage, job: str) -> None:
        self.owner, self.job = owner, job

    def release(self) -> None:
        self.owner.held.discard(self.job)


class ReconcileStorage(FakeEventStorage):
    """The event storage plus job leases; ``fail_after`` makes the n-th enqueue (and later ones) raise."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()
        self.fail_after: int | None = None
        self.sends = 0

    def lease(self, job: str) -> _Lease | None:
        if job in self.held:
            return None
        self.held.add(job)
        return _Lease(self, job)

    def enqueue_text(self, queue: str, text: str) -> Any:
        with self.lock:
            self.sends += 1
            if self.fail_after is not None and self.sends > self.fail_after:
                raise ConnectionError("queue unavailable")
        return super().enqueue_text(queue, text)


@dataclass
class World:
    dataverse: FakeChangeTracking
    applied: FakeApplied
    storage: ReconcileStorage
    now: list[float]

    def reconciler(self, *, initial_full: bool = False, routes: RoutesFile = ROUTES) -> Reconciler:
        return Reconciler(
            self.storage,  # type: ignore[arg-type]
            self.dataverse,  # type: ignore[arg-type]
            TableMetadata(self.dataverse),
            routes,
            self.applied,
            initial_full=initial_full,
            clock=lambda: self.now[0],
            enqueue_concurrency=3,
        )

    def events(self) -> list[dict[str, Any]]:
        return self.storage.messages(EVENT_QUEUE)


@pytest.fixture
def world() -> World:
    return World(FakeChangeTracking(), FakeApplied(), ReconcileStorage(), [1_700_000_000.0])


def first_run(world: World) -> None:
    report = world.reconciler().run()
    assert report.tables["account"].status == "initialized"


# -- tests ---------------------------------------------------------------------------------------------------
def test_first_run_takes_the_checkpoint_without_turning_existing_rows_into_events(world: World) -> None:
    for n in range(5):
        world.dataverse.write(name=f"existing {n}")
    report = world.reconciler().run()
    assert report.tables["account"].to_dict()["status"] == "initialized"
    assert world.events() == []
    assert world.applied.asked == []  # nothing compared
    assert report.skipped_routes == [
        {
            "route": 1,
            "table": None,
            "reason": "the route matches every table: change tracking reads one named table at a time",
        }
    ]
    row = world.storage.table(RECONCILE_TABLE).get_entity("checkpoint", "account")
    assert row["DeltaLink"].startswith(f"{ROOT}/accounts?delta=")


def test_unapplied_rows_are_enqueued_once_as_reconciled_updates_and_applied_ones_are_in_step(world: World) -> None:
    first_run(world)
    lost, lost_version = world.dataverse.write(name="Contoso", _primarycontactid_value=None)
    seen, seen_version = world.dataverse.write(name="Fabrikam")
    older, _ = world.dataverse.write(name="Older")
    _, older_version = world.dataverse.write(older, name="Older, renamed")
    world.applied.states[("account", seen)] = AppliedState(seen_version, False)  # the webhook arrived
    world.applied.states[("account", older)] = AppliedState(older_version - 1, False)  # a change lost
    report = world.reconciler().run()
    table = report.tables["account"]
    assert (table.status, table.enqueued_updates, table.enqueued_deletes, table.in_step) == ("reconciled", 2, 0, 1)
    events = {m["event"]["record_id"]: m for m in world.events()}
    assert set(events) == {lost, older}
    message = events[lost]
    assert message["source"] == "dataverse"
    assert message["reconciled"] is True
    assert message["key"] == f"reconciled|account|{lost}|{lost_version}"
    assert message["received_at"] == world.now[0]
    event = message["event"]
    assert event["message"] == "Update"
    assert event["table"] == "account"
    assert event["row_version"] == lost_version
    assert event["reconciled"] is True
    assert (
        event["attributes"]
        == event["post_image"]
        == {
            "name": "Contoso",
            "primarycontactid": None,
            "accountid": lost,
            "versionnumber": lost_version,
        }
    )
    assert events[older]["event"]["attributes"]["name"] == "Older, renamed"  # the latest state, once
    assert all("@odata.etag" not in m["event"]["attributes"] for m in world.events())


def test_deletes_are_enqueued_unless_applied_as_deleted(world: World) -> None:
    gone, _ = world.dataverse.write(name="a")
    done, _ = world.dataverse.write(name="b")
    first_run(world)
    world.dataverse.delete(gone)
    world.dataverse.delete(done)
    world.applied.states[("account", done)] = AppliedState(None, True)
    world.applied.states[("account", gone)] = AppliedState(5, False)  # its Update applied, its Delete lost
    report = world.reconciler().run()
    assert report.tables["account"].enqueued_deletes == 1
    assert report.tables["account"].in_step == 1
    [message] = world.events()
    assert message["key"] == f"reconciled|account|{gone}|deleted"
    assert message["event"]["message"] == "Delete"
    assert message["event"]["row_version"] is None
    assert message["event"]["attributes"] == {}


def test_a_failed_enqueue_keeps_the_checkpoint_and_the_next_run_enqueues_everything_again(world: World) -> None:
    first_run(world)
    checkpoint = world.storage.table(RECONCILE_TABLE).get_entity("checkpoint", "account")["DeltaLink"]
    ids = [world.dataverse.write(name=f"r{n}")[0] for n in range(7)]  # four pages of two
    world.storage.fail_after = 4
    report = world.reconciler().run()
    table = report.tables["account"]
    assert table.status == "failed"
    assert table.error == "ConnectionError"
    assert table.enqueued_updates == 4
    assert world.storage.table(RECONCILE_TABLE).get_entity("checkpoint", "account")["DeltaLink"] == checkpoint
    assert not world.storage.held  # the lease was released

    world.storage.fail_after = None
    again = world.reconciler().run()
    assert again.tables["account"].status == "reconciled"
    assert again.tables["account"].enqueued_updates == 7
    keys = [m["key"] for m in world.events()]
    assert {k.split("|")[2] for k in keys} == set(ids)  # nothing lost
    assert len(keys) == 11
    assert len(set(keys)) == 7
    assert world.storage.table(RECONCILE_TABLE).get_entity("checkpoint", "account")["DeltaLink"] != checkpoint

    world.reconciler().run()  # the checkpoint moved: nothing new
    assert len(world.events()) == 11


def test_two_runs_with_the_same_unapplied_row_enqueue_the_same_key(world: World) -> None:
    first_run(world)
    record, _ = world.dataverse.write(name="x")
    world.reconciler().run()
    world.storage.table(RECONCILE_TABLE).delete_entity("checkpoint", "account")
    world.reconciler(initial_full=True).run()  # reads the row again, still unapplied
    keys = [m["key"] for m in world.events()]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert record in keys[0]


def test_initial_full_compares_every_row(world: World) -> None:
    applied_id, version = world.dataverse.write(name="applied")
    world.applied.states[("account", applied_id)] = AppliedState(version, False)
    for n in range(4):
        world.dataverse.write(name=f"r{n}")
    report = world.reconciler(initial_full=True).run()
    assert report.tables["account"].status == "full"
    assert report.tables["account"].enqueued_updates == 4
    assert report.tables["account"].in_step == 1


def test_an_expired_delta_link_restarts_with_a_full_reconcile(world: World, caplog: pytest.LogCaptureFixture) -> None:
    applied_id, version = world.dataverse.write(name="applied")
    world.applied.states[("account", applied_id)] = AppliedState(version, False)
    first_run(world)
    lost, _ = world.dataverse.write(name="lost while the link aged")
    world.dataverse.expire()
    report = world.reconciler().run()
    table = report.tables["account"]
    assert (table.status, table.expired, table.enqueued_updates, table.in_step) == ("full", True, 1, 1)
    assert [m["event"]["record_id"] for m in world.events()] == [lost]
    assert any("webhook_reconcile_token_expired" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert world.reconciler().run().tables["account"].status == "reconciled"  # the new link works


def test_a_table_another_reconciler_holds_is_reported_busy(world: World) -> None:
    world.storage.held.add("webhook-reconcile-account")
    assert world.reconciler().run().tables["account"].status == "busy"
    assert world.dataverse.requests == []


def test_lookups_are_decoded_as_a_delivery_carries_them() -> None:
    contact = gid()
    row = {
        "@odata.etag": 'W/"1"',
        "name": "Contoso",
        "revenue": 10.5,
        "revenue@OData.Community.Display.V1.FormattedValue": "$10.50",
        "_primarycontactid_value": contact.upper(),
        "_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "contact",
        "_primarycontactid_value@OData.Community.Display.V1.FormattedValue": "Ann Lee",
        "_parentaccountid_value": None,
    }
    assert webhook_attributes(row) == {
        "name": "Contoso",
        "revenue": 10.5,
        "primarycontactid": {"id": contact, "logical_name": "contact", "name": "Ann Lee"},
        "parentaccountid": None,
    }


def test_a_route_table_that_is_no_identifier_never_reaches_a_url(world: World) -> None:
    routes = RoutesFile.model_validate(
        {
            "routes": [
                {
                    "match": {"source": "dataverse", "table": "account')/x"},
                    "handler": {"kind": "blob", "container": "c"},
                }
            ]
        }
    )
    report = world.reconciler(routes=routes).run()
    assert report.tables == {}
    assert report.skipped_routes[0]["route"] == 0
    assert world.dataverse.requests == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.text(max_size=60), deleted=st.booleans())
def test_an_invalid_record_id_is_skipped_and_reported_never_enqueued(bad: str, deleted: bool) -> None:
    world = World(FakeChangeTracking(page_size=10), FakeApplied(), ReconcileStorage(), [1.0])
    first_run(world)
    good, _ = world.dataverse.write(name="good")
    if deleted:
        world.dataverse.log.append(("deleted", bad))
    else:
        world.dataverse.version += 1
        world.dataverse.rows[bad] = {"accountid": bad, "versionnumber": world.dataverse.version}
        world.dataverse.log.append(("changed", bad))
    report = world.reconciler().run()
    table = report.tables["account"]
    is_guid = re.fullmatch(r"\{?[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\}?", bad) is not None
    messages = world.events()
    for message in messages:
        record_id = message["event"]["record_id"]
        assert re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", record_id)
        assert message["key"].split("|")[2] == record_id
    ids = {m["event"]["record_id"] for m in messages}
    assert good in ids
    if is_guid:
        assert table.skipped == 0
        assert bad.strip("{}").lower() in ids
    else:
        assert table.skipped == 1
        assert len(messages) == 1
        assert "is not a GUID" in table.reasons[0]
    for asked in world.applied.asked:  # the guard (and through it any filter) sees canonical ids only
        assert all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in asked)


def test_a_row_without_a_version_is_skipped_with_the_reason(world: World) -> None:
    first_run(world)
    record, _ = world.dataverse.write(name="x")
    world.dataverse.rows[record]["versionnumber"] = "v1"
    report = world.reconciler().run()
    assert report.tables["account"].skipped == 1
    assert "versionnumber 'v1'" in report.tables["account"].reasons[0]
    assert world.events() == []


def test_the_guard_is_asked_in_batches(world: World) -> None:
    world.dataverse.page_size = 1000
    first_run(world)
    for n in range(250):
        world.dataverse.write(name=f"r{n}")
    world.reconciler().run()
    assert [len(a) for a in world.applied.asked] == [100, 100, 50]
    assert len(world.events()) == 250


def test_reconcile_log_counts_by_window(world: World) -> None:
    log = ReconcileLog(world.storage)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    first_run(world)  # a run at world.now, long before base: outside every window below
    for minutes, count in ((0, 2), (10, 3), (20, 1)):
        world.now[0] = (base + timedelta(minutes=minutes)).timestamp()
        for n in range(count):
            world.dataverse.write(name=f"{minutes}-{n}")
        world.reconciler().run()
    assert log.recovered_between(base, base + timedelta(minutes=10)) == {"account": 5}  # both ends included
    assert log.recovered_between(base + timedelta(minutes=5), base + timedelta(hours=1)) == {"account": 4}
    assert log.recovered_between(base + timedelta(hours=1), base + timedelta(hours=2)) == {}
    runs = list(log.runs_between(base, base + timedelta(hours=1)))
    assert runs[0]["tables"]["account"] == {
        "updates": 2,
        "deletes": 0,
        "in_step": 0,
        "skipped": 0,
        "status": "reconciled",
    }


def test_reconcile_log_deletes_rows_past_the_retention(world: World) -> None:
    log = ReconcileLog(world.storage)
    first_run(world)
    world.now[0] += timedelta(days=40).total_seconds()
    world.reconciler().run()
    rows = list(world.storage.table(RECONCILE_TABLE).query_entities(f"PartitionKey eq '{LOG_PARTITION}'"))
    assert len(rows) == 1
    assert log.recovered_between(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)) == {"account": 0}


def test_the_report_is_json(world: World) -> None:
    first_run(world)
    world.dataverse.write(name="x")
    body = json.loads(json.dumps(world.reconciler().run().to_dict()))
    assert body["enqueued"] == 1
    assert body["tables"]["account"]["enqueued_updates"] == 1


# -- the admin route ---------------------------------------------------------------------------------------
def _admin(world: World, monkeypatch: pytest.MonkeyPatch, body: bytes) -> tuple[int, dict[str, Any]]:
    import azure.functions as func

    from shared.webhooks import reconciler_functions

    monkeypatch.setattr(reconciler_functions, "reconciler", world.reconciler)
    route = reconciler_functions.webhook_reconcile.build().get_user_function()
    request = func.HttpRequest("POST", "http://localhost/api/webhooks-admin/reconcile", body=body)
    answer = route(request)
    return answer.status_code, json.loads(answer.get_body())


@pytest.mark.parametrize(
    "body",
    [b'{"tables": "account"}', b'{"tables": []}', b'{"tables": [1]}', b'{"tables": ["contact"]}', b'{"tabels": []}'],
)
def test_the_admin_route_refuses_bad_input_naming_the_field(
    world: World, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    status, answer = _admin(world, monkeypatch, body)
    assert status == 400
    assert ("tables" in answer["error"]) or ("tabels" in answer["error"])
    assert world.dataverse.requests == []


def test_the_admin_route_runs_now_and_answers_the_report(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    first_run(world)
    world.dataverse.write(name="x")
    status, answer = _admin(world, monkeypatch, b'{"tables": ["account"]}')
    assert status == 200
    assert answer["tables"]["account"]["enqueued_updates"] == 1
    status, answer = _admin(world, monkeypatch, b"")
    assert status == 200
    assert answer["tables"]["account"]["status"] == "reconciled"


def test_the_admin_route_answers_503_when_storage_is_down(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ServiceRequestError

    def down(job: str) -> None:
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(world.storage, "lease", down)
    status, answer = _admin(world, monkeypatch, b"")
    assert status == 503
    assert answer["retry"] is True
