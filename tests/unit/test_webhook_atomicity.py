"""The claim that decides which copy of a delivery wins, against an in-memory Table with Azure's conditional
semantics (insert-if-absent, ETag-guarded replace and delete): one winner among simultaneous copies, a
lease that a crashed holder leaves behind taken over by exactly one copy, nothing lost when a step fails.

The same paths over real sockets (Azurite, the local host) are in tests/e2e/test_webhook_atomicity.py."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode

from shared.errors import WebhookRejected
from shared.storage import claims as claims_module
from shared.storage.queues import QUEUE_MESSAGE_LIMIT_BYTES, QueuedMessage, queue_message_fits
from shared.webhooks import dedupe as dedupe_module
from shared.webhooks import functions, processor
from shared.webhooks.dedupe import Claim, ClaimLost, Dedupe, Held, LeaseKeeper
from shared.webhooks.routes import RoutesFile

pytestmark = pytest.mark.unit

COPIES = 20
LEASE_S = 30.0
BARRIER_TIMEOUT_S = 10  # a broken test fails instead of hanging


class FakeTable:
    """Table Storage's entity operations with ETags, atomic under a lock. ``before_update`` runs (outside
    the lock) before every conditional replace, so that a test can line racing writers up on a barrier."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self.lock = threading.Lock()
        self.before_update: Callable[[], None] = lambda: None
        self.writes = 0

    def _store(self, entity: dict[str, Any]) -> dict[str, Any]:
        etag = uuid.uuid4().hex
        self.rows[(entity["PartitionKey"], entity["RowKey"])] = (dict(entity), etag)
        self.writes += 1
        return {"etag": etag}

    def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if (entity["PartitionKey"], entity["RowKey"]) in self.rows:
                raise ResourceExistsError("EntityAlreadyExists")
            return self._store(entity)

    def get_entity(self, partition_key: str, row_key: str) -> TableEntity:
        with self.lock:
            if (partition_key, row_key) not in self.rows:
                raise ResourceNotFoundError("ResourceNotFound")
            stored, etag = self.rows[(partition_key, row_key)]
        entity = TableEntity(stored)
        entity._metadata = {"etag": etag}
        return entity

    def _check(self, key: tuple[str, str], etag: str | None, match_condition: MatchConditions | None) -> None:
        assert match_condition is MatchConditions.IfNotModified, "every claim write is conditional"
        assert etag
        if self.rows[key][1] != etag:
            raise ResourceModifiedError("UpdateConditionNotSatisfied")

    def update_entity(
        self, entity: dict[str, Any], *, mode: UpdateMode, etag: str | None = None, match_condition: Any = None
    ) -> dict[str, Any]:
        assert mode is UpdateMode.REPLACE
        self.before_update()
        key = (entity["PartitionKey"], entity["RowKey"])
        with self.lock:
            if key not in self.rows:
                raise ResourceNotFoundError("ResourceNotFound")
            self._check(key, etag, match_condition)
            return self._store(entity)

    def delete_entity(
        self, partition_key: str, row_key: str, *, etag: str | None = None, match_condition: Any = None
    ) -> None:
        key = (partition_key, row_key)
        with self.lock:
            if key not in self.rows:
                return  # as the SDK: deleting an absent entity is no error
            self._check(key, etag, match_condition)
            del self.rows[key]

    def only_row(self) -> dict[str, Any]:
        ((row, _),) = self.rows.values()
        return row


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def claims(table: FakeTable, clock: Clock | None = None) -> Dedupe:
    return Dedupe(table, clock=clock or Clock(), sleep=lambda _s: None)


def all_at_once(count: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` on ``count`` threads released together; its results, or the exceptions it raised."""
    barrier = threading.Barrier(count)

    def run() -> Any:
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        try:
            return work()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _i: run(), range(count)))


# -- the claim ---------------------------------------------------------------------------------------------
def test_of_simultaneous_copies_exactly_one_wins_the_claim() -> None:
    table = FakeTable()
    results = all_at_once(COPIES, lambda: claims(table).claim("nonce-erp", "n-1", state="pending", lease_s=LEASE_S))
    won = [r for r in results if isinstance(r, Claim)]
    assert len(won) == 1
    assert all(isinstance(r, Held) and r.in_progress and r.state == "pending" for r in results if r not in won)
    assert table.only_row()["State"] == "pending"


def test_a_copy_that_waits_sees_the_winners_outcome() -> None:
    table = FakeTable()
    dedupe = Dedupe(table)  # the real clock and sleep: the loser polls while the winner settles
    winner = dedupe.claim("nonce-erp", "n-2", state="pending", lease_s=LEASE_S)
    assert isinstance(winner, Claim)
    settle = threading.Timer(0.2, lambda: dedupe.settle(winner, "accepted"))
    settle.start()
    loser = dedupe.claim("nonce-erp", "n-2", state="pending", lease_s=LEASE_S, wait_s=5)
    settle.join()
    assert loser == Held("accepted", in_progress=False)
    # A winner that gives up (its enqueue failed) lets a waiting copy win instead.
    other = dedupe.claim("nonce-erp", "n-3", state="pending", lease_s=LEASE_S)
    assert isinstance(other, Claim)
    threading.Timer(0.2, lambda: dedupe.release(other)).start()
    assert isinstance(dedupe.claim("nonce-erp", "n-3", state="pending", lease_s=LEASE_S, wait_s=5), Claim)


def test_a_copy_that_waits_too_long_is_told_the_claim_is_still_in_progress() -> None:
    table = FakeTable()
    dedupe = Dedupe(table)
    assert isinstance(dedupe.claim("s", "k", state="pending", lease_s=LEASE_S), Claim)
    assert dedupe.claim("s", "k", state="pending", lease_s=LEASE_S, wait_s=0.3) == Held("pending", in_progress=True)


def test_a_stale_lease_is_taken_over_by_exactly_one_copy() -> None:
    table, clock = FakeTable(), Clock()
    crashed = claims(table, clock).claim("processed-erp", "k", state="processing", lease_s=LEASE_S)
    assert isinstance(crashed, Claim)
    clock.now += LEASE_S - 1
    assert claims(table, clock).claim("processed-erp", "k", state="processing", lease_s=LEASE_S).in_progress  # type: ignore[union-attr]
    clock.now += 2
    barrier, lined_up = threading.Barrier(COPIES), threading.local()

    def line_up() -> None:  # each taker's first replace waits until every taker has read the same ETag
        if not getattr(lined_up, "done", False):
            lined_up.done = True
            barrier.wait(timeout=BARRIER_TIMEOUT_S)

    table.before_update = line_up
    results = all_at_once(
        COPIES, lambda: claims(table, clock).claim("processed-erp", "k", state="processing", lease_s=LEASE_S)
    )
    table.before_update = lambda: None
    won = [r for r in results if isinstance(r, Claim)]
    assert len(won) == 1, results
    assert all(isinstance(r, Held) and r.in_progress for r in results if r not in won)
    # The crashed holder, back again, can neither settle nor delete the claim it lost.
    with pytest.raises(ClaimLost):
        claims(table, clock).settle(crashed, "done")
    assert claims(table, clock).release(crashed) is False
    assert table.only_row()["State"] == "processing"
    claims(table, clock).settle(won[0], "done")
    assert table.only_row()["State"] == "done"


def test_an_expired_mark_is_claimed_again_and_a_settled_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    table, clock = FakeTable(), Clock()
    first = claims(table, clock).claim("nonce-erp", "k", state="pending", lease_s=LEASE_S)
    assert isinstance(first, Claim)
    claims(table, clock).settle(first, "accepted")
    clock.now += dedupe_module.dedupe_ttl_s() - 1
    assert claims(table, clock).claim("nonce-erp", "k", state="pending", lease_s=LEASE_S) == Held("accepted", False)
    clock.now += 2
    assert isinstance(claims(table, clock).claim("nonce-erp", "k", state="pending", lease_s=LEASE_S), Claim)


def test_a_record_is_settled_at_once_and_won_again_only_after_it_expires() -> None:
    table, clock = FakeTable(), Clock()
    results = all_at_once(COPIES, lambda: claims(table, clock).record("received-dataverse", "k", state="accepted"))
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert all(r == Held("accepted", in_progress=False) for r in results if not isinstance(r, Claim))
    assert table.only_row()["LeaseUntil"] == 0.0  # no lease: nothing to take over, nothing to wait for
    clock.now += dedupe_module.dedupe_ttl_s() + 1
    assert isinstance(claims(table, clock).record("received-dataverse", "k", state="accepted"), Claim)


def test_claims_of_one_scope_spread_over_partitions() -> None:
    table, clock = FakeTable(), Clock()
    for n in range(64):
        assert isinstance(claims(table, clock).claim("received-dataverse", f"k{n}", state="pending", lease_s=1), Claim)
    partitions = {pk for pk, _ in table.rows}
    assert len(partitions) > 16
    assert all(pk.startswith("received-dataverse-") and len(pk) == len("received-dataverse-") + 2 for pk in partitions)


def test_marks_written_before_claims_existed_count_as_settled() -> None:
    table, clock = FakeTable(), Clock()
    row_key = claims_module._row_key("old")
    partition = claims_module.partition_key("processed-erp", row_key)
    table.rows[(partition, row_key)] = ({"PartitionKey": partition, "RowKey": row_key,
                                         "Expires": clock.now + 60}, "etag-0")  # fmt: skip
    assert claims(table, clock).claim("processed-erp", "old", state="processing", lease_s=LEASE_S) == Held(
        "settled", in_progress=False
    )


# -- the receiver -------------------------------------------------------------------------------------------
@dataclass
class FakeStorage:
    """The Storage calls the webhook path makes, in memory; ``fail_enqueue`` makes the queue refuse."""

    table_: FakeTable = field(default_factory=FakeTable)
    queue: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the message id of each entry of ``queue``
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    fail_enqueue: bool = False
    received: set[str] = field(default_factory=set)  # ids whose pop receipt changed (a receiver has them)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def table(self, _name: str) -> FakeTable:
        return self.table_

    def enqueue_text(self, queue: str, text: str) -> QueuedMessage:
        if self.fail_enqueue:
            raise ConnectionError("the queue is down")
        assert queue_message_fits(text)
        message_id = uuid.uuid4().hex
        with self.lock:
            self.queue.append(text)
            self.ids.append(message_id)
        return QueuedMessage(queue, message_id, f"receipt-{message_id}")

    def enqueue(self, queue: str, message: dict[str, Any]) -> QueuedMessage:
        return self.enqueue_text(queue, json.dumps(message))

    def withdraw(self, queued: QueuedMessage) -> bool:
        assert queued.pop_receipt == f"receipt-{queued.message_id}"
        with self.lock:
            if queued.message_id in self.received or queued.message_id not in self.ids:
                return False
            index = self.ids.index(queued.message_id)
            del self.ids[index], self.queue[index]
        return True

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        self.blobs[(container, name)] = data

    def get_blob(self, container: str, name: str) -> bytes | None:
        return self.blobs.get((container, name))

    def delete_blob(self, container: str, name: str) -> bool:
        return self.blobs.pop((container, name), None) is not None


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStorage:
    fake = FakeStorage()
    monkeypatch.setattr(functions, "storage", lambda: fake)
    return fake


def test_twenty_copies_of_a_signed_delivery_are_enqueued_once(store: FakeStorage) -> None:
    results = all_at_once(COPIES, lambda: functions._accept_signed("erp", "nonce-1", {"source": "erp", "payload": {}}))
    accepted = [r for r in results if not isinstance(r, Exception)]
    assert [(r.status_code, json.loads(r.get_body())) for r in accepted] == [(202, {"accepted": True})]
    replays = [r for r in results if isinstance(r, Exception)]
    assert len(replays) == COPIES - 1
    assert all(getattr(r, "status", None) == 401 and "already used" in getattr(r, "reason", "") for r in replays)
    assert len(store.queue) == 1
    assert store.table_.only_row()["State"] == "accepted"


def test_copies_of_a_dataverse_delivery_are_all_enqueued_with_no_lookup(store: FakeStorage) -> None:
    # The ordering guard drops the copies at processing (tests/unit/test_webhook_ordering.py): the
    # receiver's one storage call is the enqueue.
    message = {"source": "dataverse", "key": "req|op|Update|id", "event": {"table": "account"}}
    results = all_at_once(COPIES, lambda: functions._accept_dataverse(message))
    assert [(r.status_code, json.loads(r.get_body())) for r in results] == [(202, {"accepted": True})] * COPIES
    assert len(store.queue) == COPIES
    assert store.table_.rows == {}


def test_a_loser_withdraws_its_claim_check_blob_with_its_message(store: FakeStorage) -> None:
    big = {"source": "erp", "payload": {"pad": "x" * 100_000}}
    results = all_at_once(COPIES, lambda: functions._accept_signed("erp", "nonce-big", big))
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert len(store.queue) == 1
    (only,) = store.blobs  # the winner's blob, the one its message names
    assert json.loads(store.queue[0])["claim"] == only[1]


def test_a_failed_enqueue_writes_nothing_so_the_retry_is_accepted(store: FakeStorage) -> None:
    store.fail_enqueue = True
    with pytest.raises(ConnectionError):  # the route answers it with 503
        functions._accept_signed("erp", "nonce-2", {"source": "erp", "payload": {"pad": "x" * 100_000}})
    assert store.table_.rows == {}
    assert store.blobs == {}  # the claim-check blob of the failed copy is gone too
    store.fail_enqueue = False
    answer = functions._accept_signed("erp", "nonce-2", {"source": "erp", "payload": {"pad": "x" * 100_000}})
    assert answer.status_code == 202
    assert len(store.queue) == 1


def test_a_record_that_cannot_be_written_keeps_the_message_and_answers_202(
    store: FakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def table_down(_entity: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionError("the table is down")

    monkeypatch.setattr(store.table_, "create_entity", table_down)
    answer = functions._accept_signed("erp", "nonce-4", {"source": "erp", "payload": {}})
    assert (answer.status_code, json.loads(answer.get_body())) == (202, {"accepted": True})
    assert len(store.queue) == 1  # on the queue: the event is not lost, whatever the sender does next


def test_a_loser_whose_message_was_received_meanwhile_still_answers_as_a_replay(
    store: FakeStorage, handlers: list[str]
) -> None:
    first = functions._accept_signed("erp", "nonce-5", {"source": "erp", "payload": {}})
    assert json.loads(first.get_body()) == {"accepted": True}
    real_enqueue = store.enqueue_text

    def received_at_once(queue: str, text: str) -> QueuedMessage:
        sent = real_enqueue(queue, text)
        store.received.add(sent.message_id)  # the processor took it before the withdrawal
        return sent

    store.enqueue_text = received_at_once  # type: ignore[method-assign]
    with pytest.raises(WebhookRejected, match="already used"):
        functions._accept_signed("erp", "nonce-5", {"source": "erp", "payload": {}})
    assert len(store.queue) == 2
    ctx = FakeContext(store)
    for text in store.queue:  # the processor's claim reduces both messages to one effect
        processor.process(json.loads(text), RoutesFile(), ctx)  # type: ignore[arg-type]
    assert handlers == ["nonce-5"]


def test_a_copy_finding_a_claim_in_progress_withdraws_and_gets_503_with_retry_after(store: FakeStorage) -> None:
    # A receiver of earlier versions claimed "pending" before enqueueing: its outcome is still open.
    holder = functions._dedupe().claim("nonce-erp", "nonce-3", state="pending", lease_s=LEASE_S)
    assert isinstance(holder, Claim)
    answer = functions._accept_signed("erp", "nonce-3", {"source": "erp", "payload": {}})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == str(functions.RETRY_AFTER_S)
    assert "being accepted" in json.loads(answer.get_body())["error"]
    assert store.queue == []


# -- the claim check ----------------------------------------------------------------------------------------
def test_a_message_too_large_for_the_queue_travels_as_a_blob_reference() -> None:
    fake = FakeStorage()
    small = {"source": "dataverse", "key": "k-small", "event": {"pad": "x" * 40_000}}
    assert processor.enqueue_event(fake, small).blob is None  # type: ignore[arg-type]
    assert json.loads(fake.queue[-1]) == small
    large = {"source": "dataverse", "key": "k-large", "event": {"pad": "x" * 200_000}}
    name = processor.enqueue_event(fake, large).blob  # type: ignore[arg-type]
    assert name is not None
    assert name.startswith(hashlib.sha256(b"dataverse\nk-large").hexdigest() + "-")  # a hash, never the key
    assert name != processor.claim_blob_name("dataverse", "k-large")  # each copy writes a blob of its own
    assert len(name) == 64 + 1 + 32 + len(".json")
    assert json.loads(fake.blobs[(processor.CLAIM_CONTAINER, name)]) == large
    assert json.loads(fake.queue[-1]) == {"claim": name, "source": "dataverse", "key": "k-large"}


def test_the_queue_size_check_counts_base64_and_leaves_a_margin() -> None:
    raw_limit = QUEUE_MESSAGE_LIMIT_BYTES * 3 // 4  # what fits before base64
    assert queue_message_fits("x" * (raw_limit - 2048))
    assert not queue_message_fits("x" * raw_limit)  # at the edge of the limit: left alone
    assert not queue_message_fits("é" * (raw_limit // 2))  # counted in UTF-8 bytes, not characters


# -- the processor ------------------------------------------------------------------------------------------
@dataclass
class FakeContext:
    storage: FakeStorage


@pytest.fixture
def handlers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the handlers by a recorder; a message whose payload says ``fail`` makes them raise."""
    ran: list[str] = []
    lock = threading.Lock()

    def run(source: str, key: str, message: dict[str, Any], _routes: Any, _ctx: Any) -> list[str]:
        if message.get("payload", {}).get("fail"):
            raise RuntimeError("the handler failed")
        with lock:
            ran.append(key)
        return [f"did {key}"]

    monkeypatch.setattr(processor, "_run_handlers", run)
    return ran


def test_copies_processed_at_once_have_one_effect(handlers: list[str]) -> None:
    ctx = FakeContext(FakeStorage())
    message = {"source": "erp", "key": "n-1", "payload": {}}
    results = all_at_once(COPIES, lambda: processor.process(message, RoutesFile(), ctx))  # type: ignore[arg-type]
    assert handlers == ["n-1"]
    assert sorted(map(str, results)) == sorted(["['did n-1']"] + ["[]"] * (COPIES - 1))
    assert ctx.storage.table_.only_row()["State"] == "done"


def test_a_copy_finding_the_event_in_progress_asks_the_queue_to_retry(
    handlers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor, "PROCESS_WAIT_S", 0.2)
    ctx = FakeContext(FakeStorage())
    Dedupe(ctx.storage.table_).claim("processed-erp", "n-2", state="processing", lease_s=LEASE_S)
    with pytest.raises(processor.EventInProgress):
        processor.process({"source": "erp", "key": "n-2", "payload": {}}, RoutesFile(), ctx)  # type: ignore[arg-type]
    assert handlers == []


def test_a_failing_handler_gives_the_claim_up_and_the_retry_runs(handlers: list[str]) -> None:
    ctx = FakeContext(FakeStorage())
    with pytest.raises(RuntimeError, match="handler failed"):
        processor.process({"source": "erp", "key": "n-3", "payload": {"fail": True}}, RoutesFile(), ctx)  # type: ignore[arg-type]
    assert ctx.storage.table_.rows == {}
    assert processor.process({"source": "erp", "key": "n-3", "payload": {}}, RoutesFile(), ctx) == ["did n-3"]  # type: ignore[arg-type]


def test_a_claim_check_blob_is_read_then_deleted_once_the_event_is_done(handlers: list[str]) -> None:
    ctx = FakeContext(FakeStorage())
    message = {"source": "erp", "key": "k-big", "payload": {"pad": "x" * 200_000}}
    processor.enqueue_event(ctx.storage, message)  # type: ignore[arg-type]
    reference = json.loads(ctx.storage.queue[-1])
    assert processor.process(reference, RoutesFile(), ctx) == ["did k-big"]  # type: ignore[arg-type]
    assert ctx.storage.blobs == {}
    # A second copy (written again by a takeover at the receiver) finds the event done and drops its blob.
    processor.enqueue_event(ctx.storage, message)  # type: ignore[arg-type]
    second = json.loads(ctx.storage.queue[-1])
    assert second["claim"] != reference["claim"]
    assert processor.process(second, RoutesFile(), ctx) == []  # type: ignore[arg-type]
    assert ctx.storage.blobs == {}
    assert handlers == ["k-big"]


def test_a_message_naming_another_events_blob_is_refused(handlers: list[str]) -> None:
    ctx = FakeContext(FakeStorage())
    processor.enqueue_event(ctx.storage, {"source": "erp", "key": "k-a", "payload": {"pad": "x" * 200_000}})  # type: ignore[arg-type]
    theirs = json.loads(ctx.storage.queue[-1])["claim"]
    forged = {"source": "erp", "key": "k-b", "claim": theirs}
    with pytest.raises(ValueError, match="not this event's"):
        processor.process(forged, RoutesFile(), ctx)  # type: ignore[arg-type]
    assert handlers == []
    assert len(ctx.storage.blobs) == 1  # k-a's blob is untouched


def test_a_lease_is_renewed_while_the_work_outlasts_it_so_no_copy_takes_it_over() -> None:

    dedupe = Dedupe(FakeTable())
    lease = 0.3
    claim = dedupe.claim("processed-erp", "slow", state="processing", lease_s=lease)
    assert isinstance(claim, Claim)
    with LeaseKeeper(dedupe, claim, state="processing", lease_s=lease) as keeper:
        time.sleep(lease * 3)  # three leases of work
        rival = dedupe.claim("processed-erp", "slow", state="processing", lease_s=lease)
        assert isinstance(rival, Held)
        assert rival.in_progress  # renewed: not taken over
    dedupe.settle(keeper.claim, "done")  # the latest ETag settles it
    assert dedupe.claim("processed-erp", "slow", state="processing", lease_s=lease) == Held("done", False)


def test_without_renewal_a_lease_that_ran_out_is_taken_over() -> None:
    dedupe = Dedupe(FakeTable())
    lease = 0.2
    claim = dedupe.claim("processed-erp", "crashed", state="processing", lease_s=lease)
    assert isinstance(claim, Claim)
    time.sleep(lease * 2)
    assert isinstance(dedupe.claim("processed-erp", "crashed", state="processing", lease_s=lease), Claim)
