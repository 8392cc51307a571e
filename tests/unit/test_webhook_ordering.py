"""The ordering guard (shared.webhooks.ordering) over the in-memory Table client: an older update delivered
late never overwrites a newer one, a Delete wins, a redelivery is a duplicate, a claim blocks the events of
its record behind it until finished, abandoned or expired, and concurrent invocations share their storage
calls (one query per 14 records, one transaction per partition), falling back to one event at a time when
another writer moved a row meanwhile. What the processor does with each verdict:
tests/unit/test_webhook_processor.py."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.data.tables import TableTransactionError
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from shared.webhooks.ordering import (
    APPLIED_TABLE,
    MAX_KEYS_PER_QUERY,
    Change,
    Decision,
    OrderingGuard,
    Ticket,
    Verdict,
    _Row,
    decide,
    row_of,
)
from shared.webhooks.reconciler import AppliedState
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket
from tests.fakes.tables import FakeTableClient

pytestmark = pytest.mark.unit

SOURCE = "dataverse"
TABLE = "account"
RECORD = "5f1c7d4e-9a0b-4c2d-8e3f-112233445566"
NOW = 1_000_000.0
LEASE = 60.0
# Long enough for every thread released by a barrier to join the first one's batch on a busy machine.
BATCH_WINDOW_S = 0.3

APPLY, STALE, DUPLICATE, BUSY = Verdict.APPLY, Verdict.STALE, Verdict.DUPLICATE, Verdict.BUSY


def change(
    version: int | None, *, record: str = RECORD, deleted: bool = False, key: str = "", table: str = TABLE
) -> Change:
    """One event; its key names the event (a redelivery repeats it), by default one key per version."""
    return Change(SOURCE, table, record, version, deleted, key or f"{record}/{'delete' if deleted else version}")


def delete(*, record: str = RECORD, key: str = "") -> Change:
    return change(None, record=record, deleted=True, key=key)


class Table(FakeTableClient):
    """The fake, recording each query's filter and each transaction's refusal."""

    def __init__(self) -> None:
        super().__init__(APPLIED_TABLE)
        self.filters: list[str] = []
        self.refused: list[int] = []

    def query_entities(self, query_filter: str, **kwargs: Any) -> Any:
        self.filters.append(query_filter)
        return super().query_entities(query_filter, **kwargs)

    def submit_transaction(self, operations: Any, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            return super().submit_transaction(operations, **kwargs)
        except TableTransactionError as exc:
            self.refused.append(exc.status_code or 0)
            raise

    def count(self, operation: str) -> int:
        return sum(1 for name, _, _ in self.calls if name == operation)

    def state(self, record_id: str, table: str = TABLE) -> tuple[str, bool, bool]:
        """A record's row: (the Version applied, Deleted, whether a claim is pending)."""
        rows = [r for r in self.rows() if r["RowKey"] == row_of(record_id)]
        assert len(rows) == 1, rows
        return str(rows[0]["Version"]), bool(rows[0]["Deleted"]), bool(rows[0]["PendingKey"])


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Table:
    return Table()


def sequential(table: Any, clock: Callable[[], float] | None = None) -> OrderingGuard:
    """A guard whose every call is its own batch (no waiting for company)."""
    return OrderingGuard(table, window_s=0.0, lease_s=LEASE, clock=clock or Clock())


def batching(table: Any, size: int | None = None, clock: Callable[[], float] | None = None) -> OrderingGuard:
    """A guard whose calls within ``BATCH_WINDOW_S`` of each other share a batch; with ``size``, a batch
    is decided as soon as it holds that many (no waiting out the window)."""
    guard = OrderingGuard(table, window_s=BATCH_WINDOW_S if size is None else 10.0, lease_s=LEASE,
                          clock=clock or Clock())  # fmt: skip
    if size is not None:
        guard._begins._max_items = guard._finishes._max_items = size
    return guard


def ticket(decision: Decision) -> Ticket:
    assert decision.verdict is APPLY, decision
    assert decision.ticket is not None
    return decision.ticket


def apply(guard: OrderingGuard, event: Change) -> None:
    assert guard.finish(ticket(guard.begin(event)))


def together[T, R](items: Sequence[T], call: Callable[[T], R]) -> list[R]:
    """``call`` on every item at once, from as many threads released by one barrier."""
    barrier = threading.Barrier(len(items))

    def run(item: T) -> R:
        barrier.wait()
        return call(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(run, items))


# -- decide: the rules ------------------------------------------------------------------------------------
def applied_row(version: int | None = 3, *, deleted: bool = False) -> _Row:
    return _Row("etag", version=version, deleted=deleted, key="k")


def pending_row(holder: Change, *, until: float = NOW + LEASE, applied: int | None = 3) -> _Row:
    return _Row("etag", version=applied, key="k", pending_key=holder.key_hash, pending_version=holder.version,
                pending_delete=holder.deleted, pending_until=until)  # fmt: skip


HELD_V5 = change(5)
HELD_DELETE = delete()

RULES = [
    pytest.param(_Row(None), change(1), APPLY, id="first event of a record"),
    pytest.param(_Row(None), change(None), APPLY, id="first event without a version"),
    pytest.param(applied_row(3), change(4), APPLY, id="newer applies"),
    pytest.param(applied_row(3), change(2), STALE, id="older is stale"),
    pytest.param(applied_row(3), change(3, key="another copy"), DUPLICATE, id="equal is a duplicate"),
    pytest.param(applied_row(3), change(3), DUPLICATE, id="a redelivery is a duplicate"),
    pytest.param(applied_row(9), delete(), APPLY, id="a delete applies over any update"),
    pytest.param(applied_row(None), delete(), APPLY, id="a delete applies over an unversioned update"),
    pytest.param(applied_row(3, deleted=True), change(9), STALE, id="an update after a delete is stale"),
    pytest.param(applied_row(3, deleted=True), change(None), STALE, id="an unversioned update after a delete"),
    pytest.param(applied_row(3, deleted=True), delete(key="again"), DUPLICATE, id="a second delete is a duplicate"),
    pytest.param(applied_row(3), change(None), APPLY, id="unknown version applies when nothing pending"),
    pytest.param(applied_row(None), change(2), APPLY, id="a version over an unversioned row applies"),
    pytest.param(pending_row(HELD_V5), HELD_V5, BUSY, id="pending: the same event is busy"),
    pytest.param(pending_row(HELD_V5), change(6), BUSY, id="pending: a newer update waits"),
    pytest.param(pending_row(HELD_V5), change(4), STALE, id="pending: older than the pending is stale"),
    pytest.param(pending_row(HELD_V5), change(5, key="other"), DUPLICATE, id="pending: equal is a duplicate"),
    pytest.param(pending_row(HELD_V5, applied=1), change(2), STALE, id="pending: older, though newer than applied"),
    pytest.param(pending_row(HELD_V5), change(None), BUSY, id="pending: an unversioned update waits"),
    pytest.param(pending_row(HELD_V5), delete(), BUSY, id="pending: a delete waits for the update"),
    pytest.param(pending_row(change(None)), change(7), BUSY, id="pending unversioned: an update waits"),
    pytest.param(pending_row(HELD_DELETE), change(9), STALE, id="pending delete: an update is stale"),
    pytest.param(pending_row(HELD_DELETE), delete(key="other"), DUPLICATE, id="pending delete: a delete is dup"),
    pytest.param(pending_row(HELD_DELETE), HELD_DELETE, BUSY, id="pending delete: the same delete is busy"),
    pytest.param(pending_row(HELD_V5, until=NOW), change(4), APPLY, id="expired claim: taken over"),
    pytest.param(pending_row(HELD_V5, until=NOW - 1), change(2), STALE, id="expired claim: applied still counts"),
    pytest.param(pending_row(HELD_V5, until=NOW), HELD_V5, APPLY, id="expired claim: its own event again"),
    pytest.param(pending_row(HELD_DELETE, until=NOW), change(4), APPLY, id="expired delete claim: ignored"),
]


@pytest.mark.parametrize(("row", "event", "expected"), RULES)
def test_decide_orders_an_event_against_its_records_row(row: _Row, event: Change, expected: Verdict) -> None:
    assert decide(row, event, NOW) is expected


# -- through the guard, one event at a time -----------------------------------------------------------------
def test_begin_then_finish_records_the_version_and_releases_the_claim(table: Table) -> None:
    guard = sequential(table)
    decision = guard.begin(change(3))
    assert decision.verdict is APPLY
    assert table.state(RECORD) == ("", False, True)  # claimed, nothing applied yet
    assert guard.finish(ticket(decision))
    assert table.state(RECORD) == ("3", False, False)
    apply(guard, change(4))
    assert table.state(RECORD) == ("4", False, False)


def test_an_older_update_arriving_after_a_newer_one_is_stale_and_never_applied(table: Table) -> None:
    guard = sequential(table)
    apply(guard, change(3))
    late = guard.begin(change(2))
    assert (late.verdict, late.ticket, late.applied_version) == (STALE, None, 3)
    assert guard.begin(change(3)).verdict is DUPLICATE  # the redelivery of v3
    assert table.state(RECORD) == ("3", False, False)


def test_a_delete_wins_and_every_later_update_is_stale(table: Table) -> None:
    guard = sequential(table)
    apply(guard, change(3))
    apply(guard, delete())
    assert table.state(RECORD) == ("3", True, False)
    assert guard.begin(change(9)).verdict is STALE
    assert guard.begin(delete(key="reconciled copy")).verdict is DUPLICATE


def test_an_event_behind_a_claim_waits_and_applies_after_the_finish(table: Table) -> None:
    guard = sequential(table)
    held = guard.begin(change(3))
    assert guard.begin(change(4)).verdict is BUSY
    assert guard.begin(change(3)).verdict is BUSY  # its own redelivery: the claim may still be abandoned
    assert guard.begin(change(2)).verdict is STALE
    assert guard.finish(ticket(held))
    apply(guard, change(4))
    assert table.state(RECORD) == ("4", False, False)


def test_abandon_releases_the_claim_so_the_same_event_applies_again(table: Table) -> None:
    guard = sequential(table)
    apply(guard, change(2))
    first = ticket(guard.begin(change(3)))
    assert guard.abandon(first)  # a handler failed
    assert table.state(RECORD) == ("2", False, False)  # nothing recorded for v3
    retry = guard.begin(change(3))  # the queue's retry
    assert guard.finish(ticket(retry))
    assert table.state(RECORD) == ("3", False, False)
    assert guard.begin(change(3)).verdict is DUPLICATE


def test_abandoning_the_first_claim_of_a_record_leaves_nothing_applied(table: Table) -> None:
    guard = sequential(table)
    assert guard.abandon(ticket(guard.begin(change(3))))
    assert guard.applied(SOURCE, TABLE, [RECORD]) == {}
    apply(guard, change(2))  # an older version may still apply: v3 was never applied
    assert table.state(RECORD) == ("2", False, False)


def test_a_claim_whose_lease_ran_out_is_taken_over_and_its_holder_cannot_finish(table: Table) -> None:
    clock = Clock()
    guard = sequential(table, clock)
    apply(guard, change(1))
    crashed = ticket(guard.begin(change(5)))
    clock.now += LEASE - 1
    assert guard.begin(change(6)).verdict is BUSY  # the lease still holds
    clock.now += 1
    taker = ticket(guard.begin(change(6)))
    assert taker.applied_version == 1  # v5 was never recorded
    assert guard.finish(crashed) is False  # outlived its lease: the taker records
    assert guard.abandon(crashed) is False
    assert table.state(RECORD) == ("1", False, True)  # the taker's claim survived
    assert guard.finish(taker)
    assert table.state(RECORD) == ("6", False, False)


def test_an_expired_claim_is_taken_over_by_the_redelivery_of_its_own_event(table: Table) -> None:
    clock = Clock()
    guard = sequential(table, clock)
    crashed = ticket(guard.begin(change(5)))
    clock.now += LEASE
    redelivered = ticket(guard.begin(change(5)))
    assert guard.finish(crashed) is False
    assert guard.finish(redelivered)
    assert table.state(RECORD) == ("5", False, False)


def test_applied_answers_what_each_record_had_applied_and_omits_the_others(table: Table) -> None:
    clock = Clock()
    guard = sequential(table, clock)
    apply(guard, change(2, record="expired"))
    ticket(guard.begin(change(9, record="expired")))  # its lease runs out below: counts no more
    clock.now += LEASE / 2
    apply(guard, change(3, record="a"))
    apply(guard, change(2, record="deleted"))
    apply(guard, delete(record="deleted"))
    apply(guard, change(3, record="pending"))
    ticket(guard.begin(change(7, record="pending")))  # held: counted at its version
    apply(guard, change(4, record="pending-delete"))
    ticket(guard.begin(delete(record="pending-delete")))
    apply(guard, change(None, record="unversioned"))
    assert guard.abandon(ticket(guard.begin(change(5, record="abandoned"))))
    clock.now += LEASE / 2
    ids = ["A", "deleted", "pending", "pending-delete", "unversioned", "abandoned", "expired", "never-seen"]
    assert guard.applied(SOURCE, TABLE, ids) == {
        "A": AppliedState(3, False),  # ids are case-insensitive: answered under the id asked
        "deleted": AppliedState(2, True),
        "pending": AppliedState(7, False),
        "pending-delete": AppliedState(4, True),
        "unversioned": AppliedState(None, False),
        "expired": AppliedState(2, False),
    }
    assert guard.applied(SOURCE, "contact", ["a"]) == {}  # another table's record
    assert guard.applied(SOURCE, TABLE, []) == {}


def test_abandoning_a_claim_keeps_what_was_applied_before_it(table: Table) -> None:
    guard = sequential(table)
    apply(guard, change(None))  # applied, version unknown
    assert guard.abandon(ticket(guard.begin(change(None, key="a later event"))))
    assert guard.applied(SOURCE, TABLE, [RECORD]) == {RECORD: AppliedState(None, False)}


def test_applied_reads_at_most_14_records_per_query(table: Table) -> None:
    guard = sequential(table)
    ids = [f"record-{i:02}" for i in range(40)]
    for record_id in ids[::3]:
        apply(guard, change(1, record=record_id))
    table.calls.clear()
    table.filters.clear()
    answer = guard.applied(SOURCE, TABLE, ids)
    assert set(answer) == set(ids[::3])
    assert table.count("query_entities") == len(table.calls) == 3  # ceil(40 / 14)
    assert [len(re.findall("RowKey eq", f)) for f in table.filters] == [MAX_KEYS_PER_QUERY, MAX_KEYS_PER_QUERY, 12]


# -- batches of concurrent invocations ------------------------------------------------------------------------
def test_concurrent_begins_and_finishes_share_their_storage_calls(table: Table) -> None:
    guard = batching(table)
    events = [change(1, record=f"record-{i:02}") for i in range(40)]
    decisions = together(events, guard.begin)
    assert [d.verdict for d in decisions] == [APPLY] * 40
    begun = list(table.calls)
    assert table.count("submit_transaction") == 1, begun  # every claim in one transaction
    assert table.count("query_entities") == 3  # 40 records: more than one query of 14
    assert len(begun) == 4  # nothing else: no claim written alone
    assert all(len(re.findall("RowKey eq", f)) <= MAX_KEYS_PER_QUERY for f in table.filters)
    table.calls.clear()
    assert together([ticket(d) for d in decisions], guard.finish) == [True] * 40
    assert [name for name, _, _ in table.calls] == ["submit_transaction"]
    assert {r["RowKey"]: (r["Version"], r["PendingKey"]) for r in table.rows()} == {
        row_of(e.record_id): ("1", "") for e in events
    }


def test_concurrent_begins_of_several_tables_use_one_transaction_each(table: Table) -> None:
    events = [change(1, record=f"r{i}", table=name) for i in range(5) for name in ("account", "contact")]
    guard = batching(table, len(events))
    assert [d.verdict for d in together(events, guard.begin)] == [APPLY] * 10
    assert table.count("submit_transaction") == 2  # a transaction holds one partition
    assert table.count("query_entities") == 2


SAME_RECORD_BATCHES = [
    pytest.param(
        [change(3), change(7), change(5), change(7, key="reconciled copy")],
        [STALE, APPLY, STALE, DUPLICATE],
        "7",
        id="the newest update applies",
    ),
    pytest.param([change(3), delete(), change(9)], [STALE, APPLY, STALE], "", id="a delete first"),
    pytest.param([change(4), change(4)], [APPLY, BUSY], "4", id="two copies of one event: the second waits"),
    pytest.param([change(None), change(2)], [BUSY, APPLY], "2", id="an unversioned update waits"),
]


@pytest.mark.parametrize(("events", "expected", "version"), SAME_RECORD_BATCHES)
def test_events_of_one_record_in_one_batch_apply_only_the_newest(
    table: Table, events: list[Change], expected: list[Verdict], version: str
) -> None:
    guard = batching(table, len(events) + 1)
    other = change(1, record="another-record")
    decisions = together([*events, other], guard.begin)
    assert table.count("submit_transaction") == 1  # one batch

    # Events of one version are told apart by arrival order only (which thread came first): counted by
    # version, one of two v7 applies and the other is its duplicate, whichever it is.
    def by_version(verdicts: Sequence[Verdict]) -> Counter[tuple[str, int | None, bool, Verdict]]:
        both = zip([*events, other], verdicts, strict=True)
        return Counter((e.record_id, e.version, e.deleted, v) for e, v in both)

    assert by_version([d.verdict for d in decisions]) == by_version([*expected, APPLY])
    for decision in decisions:
        if decision.ticket is not None:
            assert sequential(table).finish(decision.ticket)
    assert table.state(RECORD)[:2] == (version, any(e.deleted for e in events))
    for event, verdict in zip(events, expected, strict=True):  # delivered again: never applied after the winner
        if verdict is not BUSY:
            assert sequential(table).begin(event).verdict in (STALE, DUPLICATE)


def test_two_deletes_of_one_record_in_one_batch_apply_once(table: Table) -> None:
    guard = batching(table, 3)
    decisions = together([delete(key="webhook"), change(4), delete(key="reconciler")], guard.begin)
    verdicts = [d.verdict for d in decisions]
    assert sorted(verdicts[::2]) == sorted([APPLY, DUPLICATE])
    assert verdicts[1] is STALE


def test_finishes_of_one_batch_survive_a_claim_taken_over_meanwhile(table: Table) -> None:
    clock = Clock()
    guard = batching(table, 2, clock)
    crashed, alive = (ticket(d) for d in together([change(5, record="a"), change(5, record="b")], guard.begin))
    clock.now += LEASE
    taker = ticket(sequential(table, clock).begin(change(5, record="a", key="redelivered")))
    table.refused.clear()
    assert together([crashed, alive], guard.finish) == [False, True]
    assert table.refused == [412]  # the batch's transaction was refused, then each finished alone
    assert table.state("a") == ("", False, True)  # the taker's claim is intact
    assert table.state("b") == ("5", False, False)
    assert sequential(table, clock).finish(taker)
    assert table.state("a") == ("5", False, False)


def test_the_old_holders_and_the_takers_finish_of_one_record_in_one_batch_both_settle(table: Table) -> None:
    # One transaction may not touch a row twice (400 InvalidDuplicateRow): the second finish goes alone.
    clock = Clock()
    guard = batching(table, 2, clock)
    crashed = ticket(sequential(table, clock).begin(change(5)))
    clock.now += LEASE
    taker = ticket(sequential(table, clock).begin(change(6, key="redelivered")))
    table.refused.clear()
    outcomes = together([taker, crashed], guard.finish)
    assert sorted(outcomes) == [False, True]  # the taker records; the old holder is told it was taken over
    assert 400 not in table.refused
    assert table.state(RECORD) == ("6", False, False)


# -- a lost answer: the connection drops around a transaction (the SDK does not repeat a $batch) ---------------
class Dropping(Table):
    """Drops the connection of the next ``drops`` transactions, after they landed (``landed``) or before."""

    def __init__(self, landed: bool) -> None:
        super().__init__()
        self.landed = landed
        self.drops = 0

    def submit_transaction(self, operations: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if self.drops:
            self.drops -= 1
            if self.landed:
                super().submit_transaction(operations, **kwargs)
            raise ServiceResponseError("Connection aborted: ConnectionResetError(104, 'Connection reset by peer')")
        return super().submit_transaction(operations, **kwargs)


@pytest.mark.parametrize("landed", [True, False], ids=["after it landed", "before it landed"])
def test_claims_whose_transaction_answer_was_lost_are_applied_once_each(landed: bool) -> None:
    table = Dropping(landed)
    guard = batching(table, 2)
    table.drops = 1
    first, second = together([change(3, record="a"), change(4, record="b")], guard.begin)
    assert (first.verdict, second.verdict) == (APPLY, APPLY)  # the claims are ours, not someone else's
    assert together([ticket(first), ticket(second)], guard.finish) == [True, True]
    assert (table.state("a"), table.state("b")) == (("3", False, False), ("4", False, False))


@pytest.mark.parametrize("landed", [True, False], ids=["after it landed", "before it landed"])
def test_finishes_whose_transaction_answer_was_lost_are_finished_not_taken_over(
    landed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    table = Dropping(landed)
    guard = batching(table, 2)
    tickets = [ticket(d) for d in together([change(3, record="a"), change(4, record="b")], guard.begin)]
    table.drops = 1
    assert together(tickets, guard.finish) == [True, True]
    assert (table.state("a"), table.state("b")) == (("3", False, False), ("4", False, False))
    assert "taken_over" not in caplog.text
    assert sequential(table).begin(change(3, record="a")).verdict is DUPLICATE  # recorded as applied


# -- conflicts: another instance writes between the read and the transaction -----------------------------------
class Race:
    """What another instance does to record ``a`` just before the batch's transaction: applies a version
    (``hold=False``) or claims it and keeps the claim."""

    def __init__(self, version: int, *, hold: bool) -> None:
        self.version, self.hold = version, hold
        self.ticket: Ticket | None = None

    def __call__(self, other: OrderingGuard) -> None:
        self.ticket = ticket(other.begin(change(self.version, record="a", key="elsewhere")))
        if not self.hold:
            assert other.finish(self.ticket)

    def __repr__(self) -> str:
        return f"{'claimed' if self.hold else 'applied'} v{self.version}"


RACES = [  # (what the other instance did to record a, a's v5 verdict, what a had applied then)
    pytest.param(lambda: Race(10, hold=False), STALE, 10, id="applied a newer version"),
    pytest.param(lambda: Race(5, hold=False), DUPLICATE, 5, id="applied the same version"),
    pytest.param(lambda: Race(4, hold=False), APPLY, 4, id="applied an older version"),
    pytest.param(lambda: Race(9, hold=True), STALE, None, id="claimed a newer version"),
    pytest.param(lambda: Race(4, hold=True), BUSY, None, id="claimed an older version"),
]


@pytest.mark.parametrize("existing", [False, True], ids=["rows created (409)", "rows updated (412)"])
@pytest.mark.parametrize(("make_race", "verdict", "applied_version"), RACES)
def test_a_row_moved_before_the_transaction_falls_back_to_one_event_at_a_time(
    table: Table, existing: bool, make_race: Callable[[], Race], verdict: Verdict, applied_version: int | None
) -> None:
    clock = Clock()
    if existing:
        for record_id in "abc":
            apply(sequential(table, clock), change(1, record=record_id))
    guard = batching(table, 3, clock)
    other = sequential(table, clock)  # another instance's guard, on the same table
    race = make_race()
    table.before_next("submit_transaction", lambda: race(other))
    a, b, c = together([change(5, record="a"), change(2, record="b"), change(3, record="c")], guard.begin)
    assert table.refused == [412 if existing else 409]  # the batch's transaction was refused
    assert a.verdict is verdict
    if applied_version is not None:
        assert a.applied_version == applied_version
    # b and c were claimed again, one at a time, and finish
    guard = sequential(table, clock)
    assert [guard.finish(ticket(b)), guard.finish(ticket(c))] == [True, True]
    assert (table.state("b"), table.state("c")) == (("2", False, False), ("3", False, False))
    if race.hold:  # the other instance's claim survived the fallback
        assert race.ticket is not None
        assert table.state("a")[2]
        assert other.finish(race.ticket)
    if a.ticket is not None:
        assert guard.finish(a.ticket)
    elif verdict is BUSY:  # behind the other's claim: applies once that one is released
        apply(guard, change(5, record="a"))
    expected = max(5 if verdict in (APPLY, BUSY) else 0, race.version)
    assert table.state("a") == (str(expected), False, False)  # no claim left behind


# -- properties ---------------------------------------------------------------------------------------------
HOSTILE = st.sampled_from(
    [*"/\\#?'\"|-_. %@&=+:", *map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\ud800", "\udfff", "İ", "K", "ß"]
)
TEXT = st.text(st.one_of(HOSTILE, st.characters(exclude_categories=()), st.sampled_from("abcH-")), max_size=40)


def _hash_of(text: str) -> str:
    return "h-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@settings(deadline=None, max_examples=100)
@given(first=TEXT, second=TEXT, table_name=TEXT, other_table=TEXT)
@example(first="a/b", second="a_b", table_name="t", other_table="t/")
@example(first=_hash_of("x"), second="x", table_name="account", other_table="h-account")
@example(first="ABC", second="abd", table_name="", other_table="\x00")
@example(first="\ud800", second="\udfff", table_name="\ud800#?", other_table="\x7f\x9f")
def test_no_two_records_share_a_row_whatever_their_ids(
    first: str, second: str, table_name: str, other_table: str
) -> None:
    assume(first.lower() != second.lower() and table_name != other_table)
    assert row_of(first) != row_of(second)
    table = Table()
    guard = sequential(table)
    apply(guard, change(2, record=first, table=table_name))
    assert guard.begin(change(1, record=first, table=table_name)).verdict is STALE
    apply(guard, change(1, record=second, table=table_name))  # not stale: another record
    apply(guard, change(1, record=first, table=other_table))  # nor the same id in another table
    assert guard.applied(SOURCE, table_name, [first, second]) == {
        first: AppliedState(2, False),
        second: AppliedState(1, False),
    }
    assert guard.applied(SOURCE, other_table, [first, second]) == {first: AppliedState(1, False)}
    assert len(table.rows()) == 3


@settings(deadline=None, max_examples=100)
@given(deliveries=st.lists(st.integers(1, 8), min_size=1, max_size=14), data=st.data())
def test_versions_delivered_in_any_order_apply_in_increasing_order_ending_at_the_newest(
    deliveries: list[int], data: st.DataObject
) -> None:
    """Each version is one event (its copies repeat its key); an event's handlers may fail (abandon: the
    queue delivers it again) and claims may stay held while later deliveries arrive."""
    table = Table()
    guard = sequential(table)
    queue = list(deliveries)
    held: list[Ticket] = []
    applied: list[int] = []
    failures = 3  # at most, so that every run ends

    def release() -> None:
        nonlocal failures
        claim = held.pop(0)
        version = claim.change.version or 0
        if failures and data.draw(st.booleans(), label="its handlers fail"):
            failures -= 1
            assert guard.abandon(claim)
            queue.append(version)  # the queue's retry
        else:
            assert guard.finish(claim)
            applied.append(version)

    while queue or held:
        if held and (not queue or data.draw(st.booleans(), label="release a claim first")):
            release()
            continue
        version = queue.pop(0)
        decision = guard.begin(change(version))
        if decision.verdict is APPLY:
            held.append(ticket(decision))
        elif decision.verdict is BUSY:
            assert held  # busy only behind a claim
            queue.append(version)
            release()
    assert applied == sorted(set(applied))  # strictly increasing
    assert applied[-1] == max(deliveries)
    assert table.state(RECORD) == (str(max(deliveries)), False, False)
