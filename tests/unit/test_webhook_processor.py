"""The webhook queue processor with its real handlers, over in-memory storage, Dataverse client and HTTP:
what a blob, upsert or forward route does with an event, what is dead-lettered rather than retried, what
is raised for the queue to retry, and how the ordering guard makes N deliveries of one event one run and
never applies an older one over a newer one (its own rules: tests/unit/test_webhook_ordering.py).

The claim's races and the receiver's side are in tests/unit/test_webhook_atomicity.py (with the handlers
replaced by a recorder); here the handlers are the real ones."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dataverse.schema import TableMetadata
from shared.errors import DataverseError, DownstreamError
from shared.outgoing_http import FORWARD, HttpCaller
from shared.webhooks import processor
from shared.webhooks.ordering import APPLIED_TABLE, Change, guard
from shared.webhooks.processor import CLAIM_CONTAINER, DEAD_LETTER_CONTAINER, EventInProgress, HandlerContext
from shared.webhooks.routes import RoutesFile
from shared.webhooks.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.fakes.event_storage import FakeEventDataverse, FakeEventStorage, Upserted, entity_definition
from tests.fakes.http import FakeHttp, Recorded, answer
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket
from tests.fakes.sync_store import ACCOUNT_SCHEMA

pytestmark = pytest.mark.unit

RECORD_ID = "5f1c7d4e-9a0b-4c2d-8e3f-112233445566"
EVENTS = "events"  # the blob handler's container
TARGET = "https://target.example"
FORWARD_URL = f"{TARGET}/hooks/dvbridge?code=not-shown"
SIGNING_SECRET_NAME = "forward-signing"
SIGNING_VALUE = "test-signing-value"  # not a real secret: what the fake Key Vault reader hands out

BLOB_ROUTE = {
    "match": {"table": "account", "message": ["Create", "Update"]},
    "handler": {"kind": "blob", "container": EVENTS},
}
UPSERT_ROUTE = {
    "match": {"table": "account", "message": ["Create", "Update"]},
    "handler": {
        "kind": "dataverse_upsert",
        "table": "account",
        "entity_set": "accounts",
        "key": ["accountnumber"],
        "mapping": {"accountnumber": {"source": "accountnumber"}, "name": {"source": "name"}},
    },
}


def routes(*entries: dict[str, Any]) -> RoutesFile:
    return RoutesFile.model_validate({"routes": list(entries)})


def event_name(key: str) -> str:
    """The per-event part of a blob name, as the processor documents it: a hash of the event key."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def dataverse_message(key: str, **event: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"message": "Update", "table": "account", "record_id": RECORD_ID, "attributes": {},
                              "post_image": {}, "size_exceeded": False, "row_version": 1}  # fmt: skip
    if event.get("size_exceeded") or event.get("message") == "Delete":
        fields["row_version"] = None  # a stripped context and a Delete carry none
    return {"source": "dataverse", "key": key, "event": fields | event}


@dataclass
class World:
    storage: FakeEventStorage
    client: FakeEventDataverse
    ctx: HandlerContext

    def applied(self) -> list[tuple[str, bool]]:
        """The ordering guard's rows: (the version applied, whether a claim is pending)."""
        return [(str(r["Version"]), bool(r["PendingKey"])) for r in self.storage.table(APPLIED_TABLE).rows()]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data in self.storage.in_container(DEAD_LETTER_CONTAINER).values()]


@pytest.fixture
def world() -> World:
    storage = FakeEventStorage()
    client = FakeEventDataverse(entity_definition(ACCOUNT_SCHEMA, "accounts"))
    secrets = {SIGNING_SECRET_NAME: SIGNING_VALUE}
    ctx = HandlerContext(storage, client, TableMetadata(client), secrets.__getitem__)  # type: ignore[arg-type]
    return World(storage, client, ctx)


# -- blob handler -------------------------------------------------------------------------------------------
def test_an_event_routed_to_a_blob_handler_writes_one_blob_named_by_table_record_and_event(world: World) -> None:
    message = dataverse_message("k-create", message="Create", attributes={"name": "Contoso"})
    effects = processor.process(message, routes(BLOB_ROUTE), world.ctx)
    name = f"dataverse/account/{RECORD_ID}/{event_name('k-create')}.json"
    assert effects == [f"blob {EVENTS}/{name}"]
    assert list(world.storage.in_container(EVENTS)) == [name]
    written = json.loads(world.storage.blobs[(EVENTS, name)])
    assert written.pop("applied_at") == pytest.approx(time.time(), abs=60)
    assert written == {"key": "k-create", "event": message["event"]}
    assert world.applied() == [("1", False)]  # its version, recorded as applied


@pytest.mark.parametrize(
    ("table", "record_id", "kept"),
    [("../x", RECORD_ID, (False, True)), ("account", "a/b", (True, False)), ("..", ".", (False, False)),
     ("a\\b", "", (False, False))],
)  # fmt: skip
def test_a_path_shaped_table_or_record_id_stays_inside_its_folder(
    world: World, table: str, record_id: str, kept: tuple[bool, bool]
) -> None:
    anywhere = {"match": {}, "handler": {"kind": "blob", "container": EVENTS}}
    processor.process(dataverse_message("k-path", table=table, record_id=record_id), routes(anywhere), world.ctx)
    (name,) = world.storage.in_container(EVENTS)
    source, table_part, record_part, last = name.split("/")
    assert (source, last) == ("dataverse", f"{event_name('k-path')}.json")
    for part, value, as_is in ((table_part, table, kept[0]), (record_part, record_id, kept[1])):
        assert part == value if as_is else re.fullmatch(r"h-[0-9a-f]{24}", part)  # an unsafe value is hashed


_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,100}")
any_text = st.text(st.characters(exclude_categories=()), max_size=120)  # lone surrogates, controls, '/', '\'


@settings(max_examples=150, deadline=None)
@given(table=any_text, record_id=any_text)
def test_any_table_and_record_id_make_a_blob_name_of_four_segments_none_of_them_dot_dot(
    table: str, record_id: str
) -> None:
    storage = FakeEventStorage()
    ctx = HandlerContext(storage, FakeEventDataverse(), TableMetadata(FakeEventDataverse()))  # type: ignore[arg-type]
    anywhere = {"match": {}, "handler": {"kind": "blob", "container": EVENTS}}
    processor.process(dataverse_message("k-any", table=table, record_id=record_id), routes(anywhere), ctx)
    (name,) = storage.in_container(EVENTS)
    segments = name.split("/")
    assert len(segments) == 4
    assert not {"", ".", ".."} & set(segments)
    assert all(_SAFE_SEGMENT.fullmatch(s) for s in segments[1:3])
    assert segments[1] == table or segments[1].startswith("h-")
    assert segments[2] == record_id or segments[2].startswith("h-")


# -- upsert handler -----------------------------------------------------------------------------------------
def test_an_upsert_route_maps_the_post_image_and_upserts_by_key(world: World) -> None:
    image = {"accountnumber": "A-1", "name": "Contoso", "telephone1": "not mapped"}
    effects = processor.process(dataverse_message("k-up", post_image=image), routes(UPSERT_ROUTE), world.ctx)
    assert world.client.upserts == [Upserted("accounts", {"accountnumber": "A-1"}, {"name": "Contoso"}, "account")]
    assert effects == ["created account {'accountnumber': 'A-1'}"]
    assert world.dead_letters() == []


def test_a_row_the_mapping_rejects_is_one_dead_letter_and_the_event_is_settled(world: World) -> None:
    message = dataverse_message("k-long", post_image={"accountnumber": "A-2", "name": "x" * 161})
    assert processor.process(message, routes(UPSERT_ROUTE), world.ctx) == ["dead-lettered (TooLong)"]
    (letter,) = world.dead_letters()
    assert (letter["key"], letter["code"], letter["field"]) == ("k-long", "TooLong", "name")
    assert letter["record"]["accountnumber"] == "A-2"
    assert world.client.upserts == []
    assert world.applied() == [("1", False)]  # settled: the queue does not retry it
    assert processor.process(message, routes(UPSERT_ROUTE), world.ctx) == []
    assert len(world.dead_letters()) == 1


# -- stripped contexts (size exceeded) ----------------------------------------------------------------------
def test_a_stripped_context_is_fetched_by_the_entity_set_the_metadata_names(world: World) -> None:
    world.client.records[("accounts", RECORD_ID)] = {"accountid": RECORD_ID, "name": "Fetched"}
    message = dataverse_message("k-big", size_exceeded=True)
    processor.process(message, routes(BLOB_ROUTE), world.ctx)
    assert world.client.calls == [("request", "EntityDefinitions(LogicalName='account')"), ("get", "accounts")]
    (data,) = world.storage.in_container(EVENTS).values()
    assert json.loads(data)["event"]["attributes"] == {"accountid": RECORD_ID, "name": "Fetched"}  # no annotation


def test_a_stripped_context_naming_a_table_dataverse_lacks_is_dead_lettered_unknown_table(world: World) -> None:
    anywhere = {"match": {}, "handler": {"kind": "blob", "container": EVENTS}}
    message = dataverse_message("k-gone", table="new_gone", size_exceeded=True)
    assert processor.process(message, routes(anywhere), world.ctx) == ["dead-lettered (unknown_table new_gone)"]
    (letter,) = world.dead_letters()
    assert (letter["code"], letter["field"]) == ("unknown_table", "PrimaryEntityName")
    assert "new_gone" in letter["reason"]
    assert world.storage.in_container(EVENTS) == {}
    assert world.applied() == []  # never ordered: a copy dead-letters again, to the same blob


@pytest.mark.parametrize(("table", "record_id", "field"), [("../x", RECORD_ID, "table"),
                                                           ("account", "../x", "PrimaryEntityId")])  # fmt: skip
def test_a_stripped_context_with_a_reference_no_url_can_carry_is_dead_lettered(
    world: World, table: str, record_id: str, field: str
) -> None:
    anywhere = {"match": {}, "handler": {"kind": "blob", "container": EVENTS}}
    message = dataverse_message("k-ref", table=table, record_id=record_id, size_exceeded=True)
    assert processor.process(message, routes(anywhere), world.ctx) == [f"dead-lettered (invalid_reference {field})"]
    (letter,) = world.dead_letters()
    assert (letter["code"], letter["field"]) == ("invalid_reference", field)
    assert ("get", "accounts") not in world.client.calls


@pytest.mark.parametrize("failing", ["request", "get"])
def test_a_503_while_fetching_propagates_and_gives_the_claim_up(world: World, failing: str) -> None:
    world.client.records[("accounts", RECORD_ID)] = {"name": "Fetched"}
    world.client.fail_next(failing, DataverseError(503, "ServiceUnavailable", "try later"))
    message = dataverse_message("k-503", size_exceeded=True)
    with pytest.raises(DataverseError) as raised:
        processor.process(message, routes(BLOB_ROUTE), world.ctx)
    assert raised.value.status == 503
    assert world.applied() == []
    assert world.dead_letters() == []
    processor.process(message, routes(BLOB_ROUTE), world.ctx)  # the queue's retry
    assert len(world.storage.in_container(EVENTS)) == 1


def test_a_stripped_context_whose_record_is_gone_is_superseded_by_its_deletion(world: World) -> None:
    message = dataverse_message("k-deleted", size_exceeded=True)  # no record: the client answers None
    effects = processor.process(message, routes(BLOB_ROUTE, UPSERT_ROUTE), world.ctx)
    assert effects == ["superseded (the record was deleted since)"]
    assert world.storage.in_container(EVENTS) == {}  # no blob of an empty record
    assert world.client.upserts == []
    assert world.dead_letters() == []  # nothing to keep: the record's Delete carries the outcome


def test_a_fetched_record_gives_the_event_its_versionnumber(world: World) -> None:
    world.client.records[("accounts", RECORD_ID)] = {"accountid": RECORD_ID, "name": "Now", "versionnumber": 7}
    processor.process(dataverse_message("k-v7", size_exceeded=True), routes(BLOB_ROUTE), world.ctx)
    assert world.applied() == [("7", False)]
    # A delivery of an older change (version 5) arriving afterwards is not applied over it.
    assert processor.process(dataverse_message("k-v5", row_version=5), routes(BLOB_ROUTE), world.ctx) == []
    assert len(world.storage.in_container(EVENTS)) == 1


# -- once per event -----------------------------------------------------------------------------------------
def test_the_same_message_processed_twice_runs_the_handlers_once(world: World) -> None:
    message = dataverse_message("k-twice", post_image={"accountnumber": "A-3", "name": "Twice"})
    assert len(processor.process(message, routes(BLOB_ROUTE, UPSERT_ROUTE), world.ctx)) == 2
    assert processor.process(message, routes(BLOB_ROUTE, UPSERT_ROUTE), world.ctx) == []
    assert len(world.storage.uploads) == 1
    assert len(world.client.upserts) == 1


def test_an_event_key_holding_a_lone_surrogate_is_processed_not_retried_forever(world: World) -> None:
    # The receiver accepts a MessageName of "\ud800" (valid JSON) and puts it in the key: the claim's row key
    # and the blob name must hash it, not fail on it (every delivery would fail, then the poison queue).
    key = f"-|-|-|Update\ud800|{RECORD_ID}"
    assert processor.process(dataverse_message(key, message="Update\ud800"), routes(BLOB_ROUTE), world.ctx) == []


def test_an_event_behind_another_of_its_record_in_progress_raises_event_in_progress(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor, "PROCESS_WAIT_S", 0.1)
    other = guard(world.storage).begin(Change("dataverse", "account", RECORD_ID, 1, False, "k-first"))
    assert other.ticket is not None
    with pytest.raises(EventInProgress):
        processor.process(dataverse_message("k-busy", row_version=2), routes(BLOB_ROUTE), world.ctx)
    assert world.storage.uploads == []
    assert world.applied() == [("", True)]  # the other event's claim, untouched
    assert guard(world.storage).finish(other.ticket)
    assert len(processor.process(dataverse_message("k-busy", row_version=2), routes(BLOB_ROUTE), world.ctx)) == 1
    assert world.applied() == [("2", False)]


def test_a_handler_failure_releases_the_claim_and_the_next_delivery_runs(world: World) -> None:
    message = dataverse_message("k-fail", post_image={"accountnumber": "A-4", "name": "Retry"})
    world.client.fail_next("upsert", DataverseError(503, "ServiceUnavailable", "try later"))
    with pytest.raises(DataverseError):
        processor.process(message, routes(UPSERT_ROUTE), world.ctx)
    assert world.applied() == [("", False)]  # released, nothing applied
    assert processor.process(message, routes(UPSERT_ROUTE), world.ctx) == ["created account {'accountnumber': 'A-4'}"]
    assert world.applied() == [("1", False)]


# -- claim check --------------------------------------------------------------------------------------------
def big_message(key: str) -> dict[str, Any]:
    return dataverse_message(key, attributes={"description": "x" * 100_000})


def test_a_claim_check_message_is_loaded_and_its_blob_deleted_once_done(world: World) -> None:
    enqueued = processor.enqueue_event(world.storage, big_message("k-claim"))  # type: ignore[arg-type]
    assert enqueued.blob is not None
    (reference,) = world.storage.messages(processor.EVENT_QUEUE)
    assert set(reference) == {"claim", "source", "key"}
    processor.process(reference, routes(BLOB_ROUTE), world.ctx)
    (data,) = world.storage.in_container(EVENTS).values()
    assert json.loads(data)["event"]["attributes"]["description"] == "x" * 100_000
    assert world.storage.in_container(CLAIM_CONTAINER) == {}


def test_a_reference_to_another_events_claim_blob_is_refused_without_running_handlers(world: World) -> None:
    theirs = processor.enqueue_event(world.storage, big_message("k-theirs")).blob  # type: ignore[arg-type]
    forged = {"claim": theirs, "source": "dataverse", "key": "k-mine"}
    with pytest.raises(ValueError, match="not this event's"):
        processor.process(forged, routes(BLOB_ROUTE), world.ctx)
    assert world.storage.in_container(EVENTS) == {}
    assert list(world.storage.in_container(CLAIM_CONTAINER)) == [theirs]
    assert world.applied() == []


def test_a_claim_check_blob_that_is_missing_gives_the_claim_up(world: World) -> None:
    name = processor.enqueue_event(world.storage, big_message("k-lost")).blob  # type: ignore[arg-type]
    assert name is not None
    assert world.storage.delete_blob(CLAIM_CONTAINER, name)
    with pytest.raises(RuntimeError, match="missing"):
        processor.process({"claim": name, "source": "dataverse", "key": "k-lost"}, routes(BLOB_ROUTE), world.ctx)
    assert world.applied() == []  # the queue's retry (then its poison queue) keeps the reference


# -- http forward -------------------------------------------------------------------------------------------
@dataclass
class Target:
    http: FakeHttp
    waits: list[float]  # what the caller slept between attempts


@pytest.fixture
def target(world: World) -> Target:
    """The forward target: the context's forwarder is a caller on this fake's session whose sleep records
    instead of waiting (in a worker, the composition root's caller for forward targets)."""
    found = Target(FakeHttp(), [])
    world.ctx = replace(world.ctx, forwarder=HttpCaller(found.http.session(), FORWARD, sleep=found.waits.append))
    return found


def forward_route(*, secret: str | None = SIGNING_SECRET_NAME) -> dict[str, Any]:
    handler = {"kind": "http_forward", "url": FORWARD_URL} | ({"secret": secret} if secret else {})
    return {"match": {"table": "account"}, "handler": handler}


def test_a_forward_is_signed_with_a_nonce_that_stays_the_same_for_the_event(world: World, target: Target) -> None:
    outcomes = [answer(503), answer(400), answer(204)]
    target.http.route(TARGET, lambda _r: outcomes.pop(0))
    message = dataverse_message("k-fwd", attributes={"name": "Signed"})
    with pytest.raises(DownstreamError):  # 503, retried at once by the caller, then 400: the queue retries
        processor.process(message, routes(forward_route()), world.ctx)
    assert len(target.waits) == 1
    assert processor.process(message, routes(forward_route()), world.ctx) == [f"forwarded to {TARGET} (204)"]
    sent: list[Recorded] = target.http.requests
    assert len(sent) == 3
    for request in sent:
        assert (request.method, request.url) == ("POST", FORWARD_URL)
        assert json.loads(request.body) == message["event"]
        assert verify(SIGNING_VALUE, dict(request.headers), request.body) == event_name("k-fwd")
    assert {r.headers[NONCE_HEADER] for r in sent} == {event_name("k-fwd")}


def test_a_forward_whose_route_names_no_secret_is_sent_unsigned(world: World, target: Target) -> None:
    target.http.route(TARGET, lambda _r: answer(200))
    processor.process(dataverse_message("k-plain"), routes(forward_route(secret=None)), world.ctx)
    (request,) = target.http.requests
    assert not {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER} & {h.lower() for h in request.headers}


def test_a_400_from_the_forward_target_is_sent_once_and_raises_downstream_error(world: World, target: Target) -> None:
    target.http.route(TARGET, lambda _r: answer(400, {"error": "bad event"}))
    with pytest.raises(DownstreamError) as raised:
        processor.process(dataverse_message("k-400"), routes(forward_route()), world.ctx)
    assert len(target.http.requests) == 1
    assert target.waits == []
    assert (raised.value.status, raised.value.retryable, raised.value.target) == (400, False, TARGET)
    assert "not-shown" not in str(raised.value)  # the target's host only: a forward URL may carry a key
    assert "/hooks" not in str(raised.value)
    assert world.applied() == [("", False)]  # given up, like any handler failure
