"""The ordering guard: a Dataverse event is applied only when its row version is newer than the last one
applied for that record, so an older update delivered late never overwrites a newer one, and a deletion
wins over every update that was not applied before it.

Dataverse does not guarantee delivery order (its asynchronous service runs by CreatedOn, but execution
order is not guaranteed), and the reconciler adds synthetic events carrying a row's latest state. Each
record has one row in the ``webhookapplied`` table (PartitionKey: source and table; RowKey: the record id)
holding what was applied (``Version``, ``Deleted``, the applied event's key hash ``Key``) and, while an
event is being applied, its claim (``Pending*``, with a lease).

For each event, :meth:`OrderingGuard.begin` answers a :class:`Verdict`:

* ``apply``: newer than anything applied or being applied (or a Delete): the claim is written; the
  processor runs the handlers, then :meth:`finish` records the version, or :meth:`abandon` clears the
  claim when a handler failed;
* ``stale``: older than what was applied (or is being applied), or an update of a deleted record: counted
  and dropped;
* ``duplicate``: the version already applied (a redelivery, or the reconciler's copy of a delivered
  change): dropped;
* ``busy``: another event of the record is being applied and this one must follow it (a newer version, or a
  Delete): the caller waits, then the queue delivers it again.

Storage calls are shared by concurrent invocations of one worker: requests arriving within
``COALESCE_WINDOW_S`` of each other are decided together, with one query per partition (up to
``MAX_KEYS_PER_QUERY`` records) and one entity-group transaction per partition for the claims, and the
finishes likewise. A transaction refused because a row moved meanwhile (another instance) is repeated one
request at a time, each row read again.

Events of one record decided in one batch: the newest (a Delete before any update) is applied, the others
are stale or duplicates of it. An event without a version (no ``RowVersion`` in the context and none
fetched) cannot be ordered: it is applied when nothing is pending, and leaves ``Version`` as it was.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from shared.logging import log_event
from shared.webhooks.reconciler import AppliedState

logger = logging.getLogger(__name__)

APPLIED_TABLE = "webhookapplied"
# Long enough for the claims of concurrent invocations (a queue batch) to meet, short beside the storage
# calls it saves.
COALESCE_WINDOW_S = 0.02
MAX_TRANSACTION_OPS = 100  # Table storage's limit on one entity-group transaction
# A Table filter holds at most 15 comparisons: the partition's and 14 record ids.
MAX_KEYS_PER_QUERY = 14
# A claim whose holder has not finished within the lease is taken for crashed: another copy may apply. As
# long as the processor's claim lease (the queue's redelivery takes a crashed holder's event over).
DEFAULT_LEASE_S = 60.0
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.|-]{1,200}")  # GUIDs, logical names and the source between them
_HASHED = "h-"  # the prefix of a hashed key; no plain key starts with it
CONTENTION_ATTEMPTS = 4  # a row moving under one request this many times in a row: the caller is told busy


class Verdict(StrEnum):
    APPLY = "apply"
    STALE = "stale"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(frozen=True)
class Change:
    """What the guard decides about: one event of one record."""

    source: str
    table: str
    record_id: str
    version: int | None  # RowVersion / versionnumber; None: unknown
    deleted: bool  # a Delete
    key: str  # the event's key (a redelivery repeats it)

    @property
    def key_hash(self) -> str:
        return hashlib.sha256(self.key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Ticket:
    """An ``apply`` verdict's claim: finishing or abandoning it succeeds only while nobody took it over."""

    change: Change
    etag: str
    applied_version: int | None  # what was applied before this event
    applied_deleted: bool
    applied_key: str = ""  # the key hash of the event applied before it (kept when this one is abandoned)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    ticket: Ticket | None = None
    applied_version: int | None = None  # what the record had applied (for the log of a stale event)


def _key(text: str) -> str:
    """A Table key for ``text``, one per text: kept when plainly safe, else a hash (so no two records of
    hostile ids share a row, as ``a/b`` and ``a_b`` would if unsafe characters were replaced)."""
    if _PLAIN_KEY.fullmatch(text) and not text.startswith(_HASHED):
        return text
    return _HASHED + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def partition_of(source: str, table: str) -> str:
    return _key(f"{source}|{table}")


def row_of(record_id: str) -> str:
    return _key(record_id.lower())


def _version_text(version: int | None) -> str:
    return "" if version is None else str(version)


def _version(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class _Row:
    """A record's row as read: what was applied and the live claim, if any."""

    etag: str | None  # None: no row yet
    version: int | None = None
    deleted: bool = False
    key: str = ""
    pending_key: str = ""
    pending_version: int | None = None
    pending_delete: bool = False
    pending_until: float = 0.0
    pending_claim: str = ""  # the claim's own token: a claim whose answer was lost is recognised as ours

    @classmethod
    def of(cls, entity: Mapping[str, Any] | None) -> _Row:
        if entity is None:
            return cls(None)
        metadata = getattr(entity, "metadata", {}) or {}
        return cls(
            etag=str(metadata.get("etag")),
            version=_version(entity.get("Version")),
            deleted=bool(entity.get("Deleted", False)),
            key=str(entity.get("Key") or ""),
            pending_key=str(entity.get("PendingKey") or ""),
            pending_version=_version(entity.get("PendingVersion")),
            pending_delete=bool(entity.get("PendingDelete", False)),
            pending_until=float(entity.get("PendingUntil") or 0.0),
            pending_claim=str(entity.get("PendingClaim") or ""),
        )

    def pending(self, now: float) -> bool:
        return bool(self.pending_key) and self.pending_until > now


def decide(row: _Row, change: Change, now: float) -> Verdict:
    """The verdict for one event against its record's row (pure: the rules in the module docstring)."""
    if row.etag is None:
        return Verdict.APPLY
    if row.pending(now):
        if row.pending_key == change.key_hash:
            return Verdict.BUSY  # a copy of this very event is being applied
        if row.pending_delete:
            return Verdict.DUPLICATE if change.deleted else Verdict.STALE
        if change.deleted:
            return Verdict.BUSY  # the delete follows the update in progress
        if change.version is not None and row.pending_version is not None and change.version <= row.pending_version:
            return Verdict.DUPLICATE if change.version == row.pending_version else Verdict.STALE
        return Verdict.BUSY
    if row.deleted:
        return Verdict.DUPLICATE if change.deleted else Verdict.STALE
    if change.deleted or change.version is None or row.version is None:
        return Verdict.APPLY
    if change.version < row.version:
        return Verdict.STALE
    if change.version == row.version:
        return Verdict.DUPLICATE
    return Verdict.APPLY


def _newest_first(changes: Iterable[tuple[int, Change]]) -> list[tuple[int, Change]]:
    """One record's events of one batch, the one to apply first: a Delete, else the highest version."""
    return sorted(changes, key=lambda item: (not item[1].deleted, -(item[1].version or -1)))


class _Batcher[T, R]:
    """Requests of concurrent threads gathered for up to ``window_s`` (or ``max_items``): the first
    caller of a batch waits the window, then runs ``flush`` over the whole batch for everyone."""

    def __init__(self, flush: Callable[[list[T]], list[R | BaseException]], window_s: float, max_items: int) -> None:
        self._flush = flush
        self._window_s = window_s
        self._max_items = max_items
        self._lock = threading.Condition()
        self._batch: _Batch[T, R] | None = None

    def submit(self, item: T) -> R:
        with self._lock:
            batch = self._batch
            leader = batch is None
            if batch is None:
                batch = self._batch = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self._max_items:
                self._batch = None  # full: the next caller starts another
                self._lock.notify_all()
            if leader:
                deadline = time.monotonic() + self._window_s
                while self._batch is batch and (remaining := deadline - time.monotonic()) > 0:
                    self._lock.wait(remaining)
                if self._batch is batch:
                    self._batch = None
        if leader:
            try:
                batch.results = self._flush(batch.items)
            except BaseException as exc:
                batch.results = [exc] * len(batch.items)
            batch.done.set()
        else:
            batch.done.wait()
        result = batch.results[index]
        if isinstance(result, BaseException):
            raise result
        return result


class _Batch[T, R]:
    def __init__(self) -> None:
        self.items: list[T] = []
        self.results: list[R | BaseException] = []
        self.done = threading.Event()


class OrderingGuard:
    """The guard over one ``webhookapplied`` table client (``azure.data.tables.TableClient``)."""

    def __init__(
        self,
        table_client: Any,
        *,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
        window_s: float = COALESCE_WINDOW_S,
    ) -> None:
        self._table = table_client
        self._clock = clock
        self.lease_s = lease_s
        self._begins: _Batcher[Change, Decision] = _Batcher(self._begin_batch, window_s, MAX_TRANSACTION_OPS)
        self._finishes: _Batcher[tuple[Ticket, bool], bool] = _Batcher(
            self._finish_batch, window_s, MAX_TRANSACTION_OPS
        )

    # -- the processor's calls ---------------------------------------------------------------------------
    def begin(self, change: Change) -> Decision:
        """Decide the event; an ``apply`` verdict holds the record's claim until finish or abandon."""
        return self._begins.submit(change)

    def finish(self, ticket: Ticket) -> bool:
        """Record the ticket's version as applied and release the claim. False: the claim was taken over
        meanwhile (this holder outlived its lease), so the taker records instead."""
        return self._finishes.submit((ticket, True))

    def abandon(self, ticket: Ticket) -> bool:
        """Release the claim without applying (a handler failed): the queue's retry can apply the event."""
        return self._finishes.submit((ticket, False))

    # -- the reconciler's question -----------------------------------------------------------------------
    def applied(self, source: str, table: str, record_ids: Sequence[str]) -> Mapping[str, AppliedState]:
        """What was applied for each record (ids absent from the answer: nothing). A claim in progress
        counts as applied at its version: its event is on its way (or the queue retries it)."""
        now = self._clock()
        rows = self._read(partition_of(source, table), [row_of(i) for i in record_ids])
        found: dict[str, AppliedState] = {}
        for record_id in record_ids:
            row = rows.get(row_of(record_id))
            if row is None or row.etag is None:
                continue
            if row.pending(now):
                version = max((v for v in (row.version, row.pending_version) if v is not None), default=None)
                found[record_id] = AppliedState(version, row.deleted or row.pending_delete)
            elif row.key or row.deleted or row.version is not None:
                found[record_id] = AppliedState(row.version, row.deleted)
        return found

    # -- batches -----------------------------------------------------------------------------------------
    def _begin_batch(self, changes: list[Change]) -> list[Decision | BaseException]:
        results: list[Decision | BaseException] = [Decision(Verdict.BUSY)] * len(changes)
        by_partition: dict[str, list[int]] = defaultdict(list)
        for index, change in enumerate(changes):
            by_partition[partition_of(change.source, change.table)].append(index)
        for partition, indexes in by_partition.items():
            try:
                self._begin_partition(partition, [(i, changes[i]) for i in indexes], results)
            except Exception as exc:  # storage down: every event of the partition is retried by the queue
                for i in indexes:
                    results[i] = exc
        return results

    def _begin_partition(
        self, partition: str, changes: list[tuple[int, Change]], results: list[Decision | BaseException]
    ) -> None:
        now = self._clock()
        rows = self._read(partition, list(dict.fromkeys(row_of(c.record_id) for _, c in changes)))
        by_row: dict[str, list[tuple[int, Change]]] = defaultdict(list)
        for index, change in changes:
            by_row[row_of(change.record_id)].append((index, change))
        claims: list[tuple[int, Change, _Row]] = []
        for row_key, events in by_row.items():
            row = rows.get(row_key, _Row(None))
            first, *others = _newest_first(events)
            verdict = decide(row, first[1], now)
            results[first[0]] = Decision(verdict, applied_version=row.version)
            if verdict is Verdict.APPLY:
                claims.append((first[0], first[1], row))
            for index, change in others:  # behind the first of this batch: decided as if it were pending
                if verdict in (Verdict.APPLY, Verdict.BUSY):
                    pending = replace(row, etag=row.etag or "-", pending_key=first[1].key_hash,
                                      pending_version=first[1].version, pending_delete=first[1].deleted,
                                      pending_until=now + self.lease_s)  # fmt: skip
                    later = decide(pending, change, now)
                else:
                    later = decide(row, change, now)
                results[index] = Decision(later, applied_version=row.version)
        if not claims:
            return
        tokens = [uuid.uuid4().hex for _ in claims]
        operations = [
            self._claim_operation(partition, change, row, now, token)
            for (_, change, row), token in zip(claims, tokens, strict=True)
        ]
        try:
            answers = self._transact(operations)
        except Exception as exc:
            if not _worth_one_at_a_time(exc):
                raise
            # A row moved since it was read (another instance), or the answer was lost (a dropped
            # connection; the SDK does not repeat a transaction): each claim again, one at a time.
            for (index, change, _), token in zip(claims, tokens, strict=True):
                results[index] = self._begin_one(partition, change, token)
            return
        for (index, change, row), answer in zip(claims, answers, strict=True):
            ticket = Ticket(change, str(answer["etag"]), row.version, row.deleted, row.key)
            results[index] = Decision(Verdict.APPLY, ticket, row.version)

    def _begin_one(self, partition: str, change: Change, token: str) -> Decision:
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ServiceRequestError,
            ServiceResponseError,
        )

        for _ in range(CONTENTION_ATTEMPTS):
            now = self._clock()
            row = self._read(partition, [row_of(change.record_id)]).get(row_of(change.record_id), _Row(None))
            if row.etag is not None and row.pending_claim == token and row.pending(now):
                # An earlier attempt of this very claim landed but its answer was lost: it is ours.
                return Decision(Verdict.APPLY, Ticket(change, row.etag, row.version, row.deleted, row.key), row.version)
            verdict = decide(row, change, now)
            if verdict is not Verdict.APPLY:
                return Decision(verdict, applied_version=row.version)
            operation, entity, kwargs = self._claim_operation(partition, change, row, now, token)
            try:
                if operation == "create":
                    answer = self._table.create_entity(entity)
                else:
                    answer = self._table.update_entity(entity, **kwargs)
            except (ResourceExistsError, ResourceModifiedError, ServiceRequestError, ServiceResponseError):
                continue  # moved again, or the answer was lost: read again
            ticket = Ticket(change, str(answer["etag"]), row.version, row.deleted, row.key)
            return Decision(Verdict.APPLY, ticket, row.version)
        return Decision(Verdict.BUSY)

    def _claim_operation(
        self, partition: str, change: Change, row: _Row, now: float, token: str
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": partition,
            "RowKey": row_of(change.record_id),
            "Version": _version_text(row.version),
            "Deleted": row.deleted,
            "Key": row.key,
            "PendingKey": change.key_hash,
            "PendingVersion": _version_text(change.version),
            "PendingDelete": change.deleted,
            "PendingUntil": now + self.lease_s,
            "PendingClaim": token,
        }
        if row.etag is None:
            return "create", entity, {}
        return "update", entity, {"mode": UpdateMode.REPLACE, "etag": row.etag,
                                  "match_condition": MatchConditions.IfNotModified}  # fmt: skip

    def _finish_batch(self, items: list[tuple[Ticket, bool]]) -> list[bool | BaseException]:
        results: list[bool | BaseException] = [False] * len(items)
        by_partition: dict[str, list[int]] = defaultdict(list)
        for index, (ticket, _) in enumerate(items):
            by_partition[partition_of(ticket.change.source, ticket.change.table)].append(index)
        for partition, indexes in by_partition.items():
            # One operation per row in a transaction (Table storage refuses a second with 400
            # InvalidDuplicateRow): a row finished twice (its old holder and its taker) goes alone afterwards.
            rows: set[str] = set()
            together: list[int] = []
            alone: list[int] = []
            for i in indexes:
                row = row_of(items[i][0].change.record_id)
                (alone if row in rows else together).append(i)
                rows.add(row)
            operations = {i: self._finish_operation(partition, *items[i]) for i in indexes}
            try:
                self._transact([operations[i] for i in together])
            except Exception as exc:
                if not _worth_one_at_a_time(exc):
                    for i in together:
                        results[i] = exc
                else:  # one was taken over, or the answer was lost: each finishes alone
                    for i in together:
                        results[i] = self._finish_one(*operations[i])
            else:
                for i in together:
                    results[i] = True
            for i in alone:
                results[i] = self._finish_one(*operations[i])
        return results

    def _finish_one(self, operation: str, entity: dict[str, Any], kwargs: dict[str, Any]) -> bool | BaseException:
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self._table.update_entity(entity, **kwargs)
        except (ResourceModifiedError, ResourceNotFoundError):
            try:
                now = self._read(entity["PartitionKey"], [entity["RowKey"]]).get(entity["RowKey"], _Row(None))
            except Exception as exc:
                return exc
            if (
                now.etag is not None
                and not now.pending_key
                and (now.key, now.deleted) == (entity["Key"], entity["Deleted"])
            ):
                return True  # an earlier attempt landed (its answer was lost): finished as this one would
            log_event(logger, "webhook_ordering_claim_taken_over", logging.WARNING, table=entity["PartitionKey"])
            return False
        except Exception as exc:
            return exc
        return True

    def _finish_operation(
        self, partition: str, ticket: Ticket, applied: bool
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        change = ticket.change
        version, deleted, key = ticket.applied_version, ticket.applied_deleted, ticket.applied_key
        if applied:
            if change.version is not None:
                version = max(change.version, version or 0)
            deleted = deleted or change.deleted
            key = change.key_hash
        entity = {"PartitionKey": partition, "RowKey": row_of(change.record_id), "Version": _version_text(version),
                  "Deleted": deleted, "Key": key, "PendingKey": "", "PendingVersion": "", "PendingDelete": False,
                  "PendingUntil": 0.0}  # fmt: skip
        return "update", entity, {"mode": UpdateMode.REPLACE, "etag": ticket.etag,
                                  "match_condition": MatchConditions.IfNotModified}  # fmt: skip

    # -- storage -----------------------------------------------------------------------------------------
    def _read(self, partition: str, row_keys: list[str]) -> dict[str, _Row]:
        found: dict[str, _Row] = {}
        for start in range(0, len(row_keys), MAX_KEYS_PER_QUERY):
            chunk = row_keys[start : start + MAX_KEYS_PER_QUERY]
            names = {f"r{i}": key for i, key in enumerate(chunk)}
            rows = " or ".join(f"RowKey eq @{name}" for name in names)
            query = f"PartitionKey eq @p and ( {rows} )"  # spaced: the SDK substitutes @names between spaces
            for entity in self._table.query_entities(query, parameters={"p": partition, **names}):
                found[str(entity["RowKey"])] = _Row.of(entity)
        return found

    def _transact(self, operations: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[Mapping[str, Any]]:
        answers: list[Mapping[str, Any]] = []
        for start in range(0, len(operations), MAX_TRANSACTION_OPS):
            answers.extend(self._table.submit_transaction(operations[start : start + MAX_TRANSACTION_OPS]))
        return answers


def _worth_one_at_a_time(exc: Exception) -> bool:
    """A transaction refused because one of its rows exists already or moved (409/412), or whose answer
    was lost (a dropped connection: it may or may not have landed): worth a retry one row at a time,
    each row read again."""
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError
    from azure.data.tables import TableTransactionError

    if isinstance(exc, TableTransactionError):
        return exc.status_code in (409, 412)
    return isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError)


_GUARDS_LOCK = threading.Lock()
_GUARD_ATTRIBUTE = "_dvbridge_ordering_guard"


def guard(storage: Any) -> OrderingGuard:
    """One guard per storage object, kept on it (a worker's concurrent invocations share its batches)."""
    with _GUARDS_LOCK:
        found = getattr(storage, _GUARD_ATTRIBUTE, None)
        if not isinstance(found, OrderingGuard):
            found = OrderingGuard(storage.table(APPLIED_TABLE))
            setattr(storage, _GUARD_ATTRIBUTE, found)
        return found
