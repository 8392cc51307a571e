"""The webhook reconciler: Dataverse change tracking turned into the events a receiver outage lost.

Dataverse drops a webhook delivery for good when the receiver refused the connection, timed out or
answered a status it does not retry. Per **routed table** (a ``source: dataverse`` route that names a
``table``), the reconciler reads the change-tracking delta since the table's checkpoint, asks the ordering
guard (:class:`AppliedVersions`) which version of each record the processors have applied, and enqueues a
synthetic ``Update`` for every changed row newer than that and a synthetic ``Delete`` for every deleted id
not applied as deleted, as the receiver would have (``shared.webhooks.processor.enqueue_event``).

* **Checkpoint**: the table's delta link, in Table storage (``webhookreconcile``, ETag-guarded). It moves
  only after every event of the delta is on the queue: a crash in between reads the delta again next run,
  which enqueues duplicates (same keys: the processor's claim and the guard reduce them to one effect),
  never a loss. One reconciler at a time per table, through a blob lease (``shared.storage.leases``).
* **First run** (no checkpoint): the initial read's delta link becomes the checkpoint and no event is
  enqueued (the rows that exist were there before the reconciler, not lost deliveries);
  ``WEBHOOK_RECONCILE_INITIAL_FULL=true`` compares every row with the guard instead.
* **Expired delta link** (older than the environment's change-tracking retention, ``ExpiredVersionStamp``
  0x80044352): a warning, then an initial read compared row by row with the guard (a full reconcile).
* **Columns**: no ``$select``, so every column (``versionnumber`` included). The blob and forward handlers
  pass on the whole event, so no route declares the columns it needs; and a delta link keeps the select of
  its initial read, so a route added later would otherwise need a reset checkpoint to see its columns.
* **Streaming**: ``DataverseClient.track_changes`` gathers every page of a read before it returns (an
  initial read is the whole table), so the reconciler follows the same protocol (``Prefer:
  odata.track-changes``, next links, the delta link on the last page) one page at a time through the
  client's request path; memory holds one page and its events.
* **Untrusted values**: table names from the routes file are checked as OData identifiers and record ids
  from Dataverse as GUIDs before they reach a URL, a key or a message; a row that fails is skipped and
  counted with its reason, never enqueued.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.config import SettingsReader
from shared.dataverse.addressing import KeyValueRefused, guid, identifier, table_definition_path
from shared.errors import DataverseError, DvbridgeError
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.webhooks.context import DataverseEvent
from shared.webhooks.processor import enqueue_event
from shared.webhooks.routes import RoutesFile

if TYPE_CHECKING:
    from shared.dataverse.client import DataverseClient
    from shared.dataverse.schema import TableMetadata
    from shared.storage import Storage

logger = logging.getLogger(__name__)

SOURCE = "dataverse"
RECONCILE_TABLE = "webhookreconcile"
CHECKPOINT_PARTITION = "checkpoint"  # one row per table: its delta link
LOG_PARTITION = "runlog"  # one row per run: its counts, keyed by when it finished
LEASE_PREFIX = "webhook-reconcile-"  # + table: the blob lease of one table's reconciliation
APPLIED_BATCH = 100  # record ids per question to the ordering guard
ENQUEUE_CONCURRENCY = 8  # queue sends in flight per table: each is one storage round trip
PAGE_SIZE = 1000  # rows per change-tracking page (Dataverse serves at most 5,000)
LOG_RETENTION = timedelta(days=30)  # run-log rows older than this are deleted by later runs
PRUNE_BATCH = 100  # old run-log rows deleted per run at most, so pruning never dominates a run
MAX_REASONS = 5  # skipped-row reasons a table report quotes (the count is complete)
PREVIEW_CHARS = 60  # how much of a refused value a reason quotes
# Dataverse's ExpiredVersionStamp: the delta token is older than the change-tracking retention
# (Organization.ExpireChangeTrackingInDays). The Web API's HTTP status for it is UNCONFIRMED, so the code
# (hex or decimal, as the SDK reports it) or the documented message decides, whatever the status.
EXPIRED_VERSION_STAMP_CODES = ("0x80044352", "-2147204270")
EXPIRED_MESSAGE = "version stamp associated with the client has expired"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
FORMATTED_VALUE = "OData.Community.Display.V1.FormattedValue"
# The lookups' target table and display name, so a reconciled event's references look like a delivery's.
# Whether Dataverse honours include-annotations on change-tracking reads is UNCONFIRMED; without them a
# reference carries its id alone.
PREFER = (
    f"odata.track-changes,odata.maxpagesize={PAGE_SIZE},"
    f'odata.include-annotations="{LOOKUP_LOGICAL_NAME},{FORMATTED_VALUE}"'
)
_LOOKUP = re.compile(r"_([A-Za-z0-9_]+)_value")
_DIGITS = re.compile(r"[0-9]{1,19}")  # a versionnumber (BigInt) written as text (IEEE754Compatible)


# -- the ordering guard's answer (shared.webhooks.ordering implements it) -----------------------------------
@dataclass(frozen=True)
class AppliedState:
    """What the processors applied for one record."""

    version: int | None  # the highest RowVersion applied for that record (None: unknown)
    deleted: bool  # a Delete was applied


class AppliedVersions(Protocol):
    def applied(self, source: str, table: str, record_ids: Sequence[str]) -> Mapping[str, AppliedState]:
        """The applied state of each record id; an id absent from the answer has nothing applied yet."""
        ...


class DeltaTokenExpired(DvbridgeError):
    """The checkpoint's delta link is older than the environment's change-tracking retention."""


# -- reports -------------------------------------------------------------------------------------------------
@dataclass
class TableReport:
    """One table's reconciliation. ``status``: ``reconciled`` (a delta was read), ``initialized`` (first run:
    checkpoint set, nothing compared), ``full`` (every row compared: first run with
    WEBHOOK_RECONCILE_INITIAL_FULL, or after an expired delta link), ``busy`` (another reconciler holds the
    table), ``failed`` (the checkpoint did not move: the next run repeats), ``conflict`` (the checkpoint
    was moved by another writer meanwhile: this run's events stand, its link was not saved)."""

    table: str
    status: str = "reconciled"
    enqueued_updates: int = 0
    enqueued_deletes: int = 0
    in_step: int = 0
    skipped: int = 0  # rows whose id or version is unusable: never enqueued
    expired: bool = False  # the delta link had expired: a full reconcile followed
    reasons: list[str] = field(default_factory=list)  # the first skipped rows' reasons
    error: str | None = None

    @property
    def enqueued(self) -> int:
        return self.enqueued_updates + self.enqueued_deletes

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "enqueued_updates": self.enqueued_updates,
            "enqueued_deletes": self.enqueued_deletes,
            "in_step": self.in_step,
            "skipped": self.skipped,
            "expired": self.expired,
            "reasons": list(self.reasons),
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class ReconcileReport:
    started_at: datetime
    finished_at: datetime | None = None
    tables: dict[str, TableReport] = field(default_factory=dict)
    skipped_routes: list[dict[str, Any]] = field(default_factory=list)  # dataverse routes that cannot be read

    @property
    def enqueued(self) -> int:
        return sum(t.enqueued for t in self.tables.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, t in self.tables.items() if t.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "enqueued": self.enqueued,
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "skipped_routes": list(self.skipped_routes),
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- which tables ------------------------------------------------------------------------------------------
def routed_tables(routes: RoutesFile) -> tuple[list[str], list[dict[str, Any]]]:
    """The tables the dataverse routes name, in route order, and the dataverse routes that cannot be
    reconciled with the reason (no table: change tracking reads one table at a time; a name that is no
    OData identifier: it could not address a table)."""
    tables: list[str] = []
    skipped: list[dict[str, Any]] = []
    for index, route in enumerate(routes.routes):
        if route.match.source != SOURCE:
            continue
        table = route.match.table
        if table is None:
            reason = "the route matches every table: change tracking reads one named table at a time"
            skipped.append({"route": index, "table": None, "reason": reason})
            continue
        try:
            identifier(table, "table")
        except KeyValueRefused as refused:
            skipped.append({"route": index, "table": table[:PREVIEW_CHARS], "reason": refused.reason})
            continue
        if table not in tables:
            tables.append(table)
    return tables, skipped


def initial_full_setting(env: Mapping[str, str] | None = None) -> bool:
    """WEBHOOK_RECONCILE_INITIAL_FULL: whether a table's first run compares every row with the guard."""
    reader = SettingsReader(env)
    value = reader.boolean(EnvVars.WEBHOOK_RECONCILE_INITIAL_FULL)
    reader.raise_problems()
    return value


# -- what one page of a change-tracking read holds ------------------------------------------------------------
@dataclass(frozen=True)
class DeltaChunk:
    """One page: changed rows, deleted ids (as Dataverse sent them) and, on the last page, the delta link."""

    changed: list[dict[str, Any]]
    deleted: list[Any]
    delta_link: str | None


def change_pages(client: DataverseClient, entity_set: str, delta_link: str | None) -> Iterator[DeltaChunk]:
    """A change-tracking read page by page: the initial read (``delta_link=None``) or a delta read.

    The links come from Dataverse; the client refuses one outside its environment (no bearer token leaves
    it). Raises :class:`DeltaTokenExpired` for an expired delta link and DataverseError(NoDeltaLink) when
    the table does not track changes."""
    link: str = delta_link or identifier(entity_set, "entity set")
    first = True
    while True:
        try:
            response = client.request("GET", link, headers={"Prefer": PREFER})
        except DataverseError as exc:
            if delta_link is not None and first and _is_expired(exc):
                raise DeltaTokenExpired(f"{entity_set}: the delta link has expired ({exc.code})") from exc
            raise
        if first and delta_link is None and "odata.track-changes" not in response.headers.get("Preference-Applied", ""):
            raise _untracked(entity_set)  # Dataverse ignores the preference on an untracked table
        first = False
        payload = response.json()
        rows = payload.get("value", []) if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            raise DataverseError(0, "BadDeltaPage", f"{entity_set}: a change-tracking page without a value list")
        changed, deleted = [], []
        for row in rows:
            if not isinstance(row, dict):
                continue  # counted by nobody: no id to report; Dataverse sends objects only
            if str(row.get("@odata.context", "")).endswith("/$deletedEntity"):
                deleted.append(row.get("id"))
            else:
                changed.append(row)
        next_link = payload.get("@odata.nextLink")
        if isinstance(next_link, str) and next_link:
            yield DeltaChunk(changed, deleted, None)
            link = next_link
            continue
        new_link = payload.get("@odata.deltaLink")
        if not isinstance(new_link, str) or not new_link:
            raise _untracked(entity_set)
        yield DeltaChunk(changed, deleted, new_link)
        return


def _untracked(entity_set: str) -> DataverseError:
    return DataverseError(
        400, "NoDeltaLink", f"{entity_set}: change tracking is not enabled for this table (enable 'Track changes')"
    )


def _is_expired(exc: DataverseError) -> bool:
    code = (exc.code or "").lower()
    return code in EXPIRED_VERSION_STAMP_CODES or EXPIRED_MESSAGE in (exc.message or "").lower()


# -- from a delta row to what a delivery's handler gets -------------------------------------------------------
def webhook_attributes(row: Mapping[str, Any]) -> dict[str, Any]:
    """A delta row's columns as a webhook context's attributes: annotations (``@odata.etag``,
    ``x@OData...``) dropped, a lookup's ``_x_value`` decoded as ``x: {id, logical_name, name}`` from its
    annotations (None where Dataverse sent none). Choices, money and numbers are numbers and dates ISO 8601
    in both already."""
    attributes: dict[str, Any] = {}
    for name, value in row.items():
        if "@" in name:
            continue
        lookup = _LOOKUP.fullmatch(name)
        if lookup is None:
            attributes[name] = value
            continue
        attributes[lookup[1]] = (
            None
            if value is None
            else {
                "id": str(value).lower(),
                "logical_name": row.get(f"{name}@{LOOKUP_LOGICAL_NAME}"),
                "name": row.get(f"{name}@{FORMATTED_VALUE}"),
            }
        )
    return attributes


def event_key(table: str, record_id: str, version: int | None) -> str:
    """Deterministic per record and version, so two runs enqueue copies that dedupe to one effect."""
    return f"reconciled|{table}|{record_id}|{'deleted' if version is None else version}"


def synthetic_message(
    table: str, record_id: str, version: int | None, attributes: dict[str, Any], received_at: float
) -> dict[str, Any]:
    """The queue message the receiver would have enqueued for this change (``version`` None: a Delete)."""
    verb = "Update" if version is not None else "Delete"
    event = DataverseEvent(
        message=verb, table=table, record_id=record_id, attributes=attributes, post_image=dict(attributes)
    )
    return {
        "source": SOURCE,
        "key": event_key(table, record_id, version),
        "event": {**event.to_dict(), "row_version": version, "reconciled": True},
        "received_at": received_at,
        "reconciled": True,
    }


def _version(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text[:PREVIEW_CHARS] + ("..." if len(text) > PREVIEW_CHARS else ""))


# -- checkpoints -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    delta_link: str
    etag: str


class CheckpointMoved(DvbridgeError):
    """Another writer changed the table's checkpoint since this run read it."""


class Checkpoints:
    """The delta link per table, one row each in ``webhookreconcile`` (partition ``checkpoint``)."""

    def __init__(self, table_client: Any) -> None:
        self._table = table_client

    def read(self, table: str) -> Checkpoint | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(CHECKPOINT_PARTITION, table)
        except ResourceNotFoundError:
            return None
        link = entity.get("DeltaLink")
        return Checkpoint(str(link), str(entity.metadata["etag"])) if link else None

    def write(self, table: str, delta_link: str, previous: Checkpoint | None) -> None:
        """Insert (first run) or replace the row while it is as this run read it; CheckpointMoved if not."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": CHECKPOINT_PARTITION,
            "RowKey": table,
            "DeltaLink": delta_link,
            "UpdatedAt": _iso(datetime.now(UTC)),
        }
        try:
            if previous is None:
                self._table.create_entity(entity)
            else:
                self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=previous.etag, match_condition=MatchConditions.IfNotModified
                )
        except ResourceExistsError as exc:
            raise CheckpointMoved(f"{table}: another reconciler wrote the first checkpoint meanwhile") from exc
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) in (404, 412):
                raise CheckpointMoved(f"{table}: the checkpoint changed since this run read it") from exc
            raise

    def reset(self, table: str) -> None:
        """Forget the table's checkpoint: its next run is a first run (operators; tests)."""
        self._table.delete_entity(CHECKPOINT_PARTITION, table)


# -- the run log -------------------------------------------------------------------------------------------
def _row_stamp(moment: datetime) -> str:
    """Sortable as text: a run-log row key starts with when its run finished (UTC, microseconds)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ReconcileLog:
    """One row per reconciler run in ``webhookreconcile`` (partition ``runlog``): when it started and
    finished and, per table, what it enqueued, found in step and skipped. Rows older than LOG_RETENTION
    are deleted by later runs (at most PRUNE_BATCH each)."""

    def __init__(self, storage: Any, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._storage = storage
        self._clock = clock

    def _table(self) -> Any:
        return self._storage.table(RECONCILE_TABLE)

    def record(self, report: ReconcileReport) -> None:
        finished = report.finished_at or self._clock()
        counts = {
            name: {
                "updates": t.enqueued_updates,
                "deletes": t.enqueued_deletes,
                "in_step": t.in_step,
                "skipped": t.skipped,
                "status": t.status,
            }
            for name, t in report.tables.items()
        }
        self._table().upsert_entity(
            {
                "PartitionKey": LOG_PARTITION,
                "RowKey": f"{_row_stamp(finished)}-{uuid.uuid4().hex[:8]}",
                "StartedAt": _iso(report.started_at),
                "FinishedAt": _iso(finished),
                "Enqueued": report.enqueued,
                "Tables": json.dumps(counts),
            }
        )
        self._prune(finished - LOG_RETENTION)

    def _prune(self, before: datetime) -> None:
        query = f"PartitionKey eq {_quoted(LOG_PARTITION)} and RowKey lt {_quoted(_row_stamp(before))}"
        try:
            table = self._table()
            old = table.query_entities(query, results_per_page=PRUNE_BATCH, select=["PartitionKey", "RowKey"])
            for count, entity in enumerate(old):
                if count >= PRUNE_BATCH:
                    break
                table.delete_entity(LOG_PARTITION, entity["RowKey"])
        except Exception as exc:  # the next run prunes again; a few extra rows cost nothing
            log_event(logger, "webhook_reconcile_prune_failed", logging.WARNING, error=type(exc).__name__)

    def runs_between(self, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """The run rows of runs that finished in [start, end], oldest first, their counts decoded."""
        low, high = _row_stamp(_aware(start)), _row_stamp(_aware(end)) + "~"  # '~' sorts after the '-' suffix
        query = f"PartitionKey eq {_quoted(LOG_PARTITION)} and RowKey ge {_quoted(low)} and RowKey lt {_quoted(high)}"
        for entity in self._table().query_entities(query):
            yield {
                "started_at": entity.get("StartedAt"),
                "finished_at": entity.get("FinishedAt"),
                "tables": json.loads(entity.get("Tables") or "{}"),
            }

    def recovered_between(self, start: datetime, end: datetime) -> dict[str, int]:
        """Per table, how many synthetic events were enqueued by runs that finished in [start, end]
        (a table a run reconciled with nothing to enqueue is there with 0)."""
        recovered: dict[str, int] = {}
        for run in self.runs_between(start, end):
            for table, counts in run["tables"].items():
                recovered[table] = (
                    recovered.get(table, 0) + int(counts.get("updates", 0)) + int(counts.get("deletes", 0))
                )
        return recovered


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # naive: taken as UTC


# -- the reconciler ----------------------------------------------------------------------------------------
class Reconciler:
    """Reconcile every routed table (or the ones named) once; see the module docstring."""

    def __init__(
        self,
        storage: Storage,
        client: DataverseClient,
        metadata: TableMetadata,
        routes: RoutesFile,
        applied: AppliedVersions,
        *,
        initial_full: bool | None = None,
        clock: Callable[[], float] = time.time,
        enqueue_concurrency: int = ENQUEUE_CONCURRENCY,
    ) -> None:
        self._storage = storage
        self._client = client
        self._metadata = metadata
        self._routes = routes
        self._applied = applied
        self._initial_full = initial_full
        self._clock = clock
        self._concurrency = max(1, enqueue_concurrency)
        self._primary_ids: dict[str, str] = {}

    def tables(self) -> list[str]:
        return routed_tables(self._routes)[0]

    def run(self, tables: Sequence[str] | None = None) -> ReconcileReport:
        """Reconcile; ``tables`` limits the run to these routed tables (a name not routed is a ValueError).
        A table's failure is in its report and does not stop the others."""
        routed, skipped = routed_tables(self._routes)
        if tables is not None:
            unknown = [t for t in tables if t not in routed]
            if unknown:
                raise ValueError(f"not a routed dataverse table: {', '.join(_preview(t) for t in unknown[:5])}")
            routed = [t for t in routed if t in tables]
        initial_full = initial_full_setting() if self._initial_full is None else self._initial_full
        report = ReconcileReport(started_at=self._now(), skipped_routes=skipped)
        for table in routed:
            report.tables[table] = self._reconcile_table(table, initial_full)
        report.finished_at = self._now()
        try:
            ReconcileLog(self._storage).record(report)
        except Exception as exc:  # the events are queued and the checkpoints moved; only the count is missing
            log_event(logger, "webhook_reconcile_log_failed", logging.WARNING, error=type(exc).__name__)
        log_event(
            logger,
            "webhook_reconciled",
            tables=len(report.tables),
            enqueued=report.enqueued,
            failed=len(report.failed),
            skipped_routes=len(skipped),
        )
        return report

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _reconcile_table(self, table: str, initial_full: bool) -> TableReport:
        report = TableReport(table)
        lease = self._storage.lease(f"{LEASE_PREFIX}{table}")
        if lease is None:
            report.status = "busy"
            log_event(logger, "webhook_reconcile_busy", table=table)
            return report
        try:
            self._read_and_enqueue(table, initial_full, report)
        except CheckpointMoved as exc:
            report.status, report.error = "conflict", str(exc)
            log_event(logger, "webhook_reconcile_conflict", logging.WARNING, table=table)
        except Exception as exc:  # the checkpoint stays: the next run repeats this delta
            report.status = "failed"
            report.error = f"{type(exc).__name__}: {exc}" if isinstance(exc, DvbridgeError) else type(exc).__name__
            log_event(logger, "webhook_reconcile_failed", logging.ERROR, table=table, error=type(exc).__name__)
        finally:
            lease.release()
        return report

    def _read_and_enqueue(self, table: str, initial_full: bool, report: TableReport) -> None:
        checkpoints = Checkpoints(self._storage.table(RECONCILE_TABLE))
        entity_set = identifier(self._metadata.entity_set_name(table), "entity set")
        previous = checkpoints.read(table)
        if previous is None:
            report.status = "full" if initial_full else "initialized"
            link = self._pass(table, entity_set, None, report, compare=initial_full)
        else:
            try:
                link = self._pass(table, entity_set, previous.delta_link, report, compare=True)
            except DeltaTokenExpired:
                log_event(logger, "webhook_reconcile_token_expired", logging.WARNING, table=table)
                report.status, report.expired = "full", True
                link = self._pass(table, entity_set, None, report, compare=True)
        checkpoints.write(table, link, previous)  # only now: every event of the delta is on the queue

    def _pass(self, table: str, entity_set: str, link: str | None, report: TableReport, *, compare: bool) -> str:
        """Read one change-tracking read to its end, enqueueing what the guard has not applied (``compare``);
        the new delta link."""
        primary = self._primary_id(table) if compare else ""
        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="reconcile") as pool:
            for chunk in change_pages(self._client, entity_set, link):
                if compare:
                    self._reconcile_chunk(table, primary, chunk, report, pool)
                if chunk.delta_link is not None:
                    return chunk.delta_link
        raise DataverseError(0, "NoDeltaLink", f"{entity_set}: the change-tracking read ended without a delta link")

    def _primary_id(self, table: str) -> str:
        """The table's primary id column (``accountid``; ``activityid`` for a task), read once per run."""
        known = self._primary_ids.get(table)
        if known is None:
            definition = self._client.request(
                "GET", table_definition_path(table), params={"$select": "PrimaryIdAttribute"}
            ).json()
            known = self._primary_ids[table] = identifier(str(definition.get("PrimaryIdAttribute", "")), "column")
        return known

    def _reconcile_chunk(
        self, table: str, primary: str, chunk: DeltaChunk, report: TableReport, pool: ThreadPoolExecutor
    ) -> None:
        changes: list[tuple[str, int, dict[str, Any]]] = []
        for row in chunk.changed:
            record_id = _record_id(row.get(primary), report, table)
            if record_id is None:
                continue
            version = _version(row.get("versionnumber"))
            if version is None:
                report.skip(
                    f"{table} {record_id}: versionnumber {_preview(row.get('versionnumber'))} is no row version"
                )
                continue
            changes.append((record_id, version, row))
        deletions = [i for i in (_record_id(value, report, table) for value in chunk.deleted) if i is not None]
        for start in range(0, len(changes), APPLIED_BATCH):
            batch = changes[start : start + APPLIED_BATCH]
            states = self._applied.applied(SOURCE, table, [record_id for record_id, _, _ in batch])
            due = []
            for record_id, version, row in batch:
                state = states.get(record_id)
                if state is None or state.version is None or version > state.version:
                    due.append(synthetic_message(table, record_id, version, webhook_attributes(row), self._clock()))
                else:
                    report.in_step += 1
            self._enqueue_all(due, pool, report, "enqueued_updates")
        for start in range(0, len(deletions), APPLIED_BATCH):
            ids = deletions[start : start + APPLIED_BATCH]
            states = self._applied.applied(SOURCE, table, ids)
            due = []
            for record_id in ids:
                state = states.get(record_id)
                if state is not None and state.deleted:
                    report.in_step += 1
                else:
                    due.append(synthetic_message(table, record_id, None, {}, self._clock()))
            self._enqueue_all(due, pool, report, "enqueued_deletes")

    def _enqueue_all(
        self, messages: list[dict[str, Any]], pool: ThreadPoolExecutor, report: TableReport, counter: str
    ) -> None:
        """Enqueue concurrently (at most the pool's workers in flight), counting each sent message in
        ``report``; the first error is raised once every send has finished (the sent ones stay queued:
        duplicates next run, never a loss)."""
        futures: list[Future[Any]] = [pool.submit(enqueue_event, self._storage, message) for message in messages]
        wait(futures)
        errors = [error for error in (future.exception() for future in futures) if error is not None]
        setattr(report, counter, getattr(report, counter) + len(futures) - len(errors))
        if errors:
            raise errors[0]


def _record_id(value: Any, report: TableReport, table: str) -> str | None:
    try:
        return guid(value, "id")
    except KeyValueRefused:
        report.skip(f"{table}: the record id {_preview(value)} is not a GUID")
        return None
