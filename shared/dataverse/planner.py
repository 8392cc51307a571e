"""The write planner: records in, one result per record out, written the fastest way the table allows.

``strategy="auto"`` uses bulk messages (``UpsertMultiple``/``CreateMultiple``/``UpdateMultiple``) where
the table takes them and ``$batch`` with continue-on-error otherwise; ``"bulk"``, ``"batch"`` and
``"single"`` force one. Chunks run in parallel up to ``min(max_concurrency, x-ms-dop-hint, 52)``
through the client's governor. Input is consumed as a stream: at most ``2 x concurrency`` chunks are
held at once.

A bulk request is atomic on standard tables, so one bad record fails its whole chunk: such a chunk is
re-sent as a ``$batch`` of single operations with continue-on-error, so good records land and each bad
one is reported with its own error. A SQL timeout halves the chunk instead. Two chunks writing the same
key are never in flight together; duplicate keys inside a chunk collapse to the last record (counted).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from shared.dataverse.addressing import (
    KeyValueRefused,
    check_key_value,
    entity_path,
    identifier,
    key_text,
    needs_query_addressing,
)
from shared.dataverse.batch_codec import UNKNOWN_OUTCOME, Operation
from shared.dataverse.client import DUPLICATE_KEY_CODE, RECORD_NOT_FOUND_CODE, DataverseClient
from shared.errors import DataverseError

BULK_ACTIONS = {"upsert": "UpsertMultiple", "create": "CreateMultiple", "update": "UpdateMultiple"}
DEFAULT_CHUNK = {"bulk": 500, "batch": 50, "single": 1}
MAX_BATCH_OPERATIONS = 1000
SQL_TIMEOUT_CODE = "0x80044151"
BULK_UNSUPPORTED_HINTS = ("not supported", "not enabled", "not yet been implemented")
RETRYABLE_PART_STATUSES = {0, 429, 502, 503, 504}
PART_RETRY_ATTEMPTS = 5
QUERY_KEYS_PER_FILTER = 20  # keys per $filter query: "(k eq '…') or …" stays far below URL length limits


@dataclass(frozen=True)
class RecordResult:
    index: int  # position in the input
    status: str  # created | updated | ok | failed | duplicate
    key: Mapping[str, Any] | None = None
    id: str | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class WriteSummary:
    total: int = 0
    ok: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    duplicates_collapsed: int = 0
    chunks: int = 0
    isolated_chunks: int = 0
    strategy: str = ""
    seconds: float = 0.0
    failures_by_code: dict[str, int] = field(default_factory=dict)

    def add(self, result: RecordResult) -> None:
        self.total += 1
        if result.status == "failed":
            self.failed += 1
            code = result.code or "?"
            self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1
        elif result.status == "duplicate":
            self.duplicates_collapsed += 1
        else:
            self.ok += 1
            self.created += result.status == "created"
            self.updated += result.status == "updated"


@dataclass
class _Chunk:
    items: list[tuple[int, dict[str, Any], dict[str, Any] | None]]  # (index, record, key values)
    keys: set[str]


class WriteRun:
    """Iterate for per-record results; ``summary`` is complete once iteration ends."""

    def __init__(self, results: Iterator[RecordResult], summary: WriteSummary) -> None:
        self._results = results
        self.summary = summary

    def __iter__(self) -> Iterator[RecordResult]:
        return self._results


class WritePlanner:
    def __init__(self, client: DataverseClient, *, bulk_tables: Mapping[str, bool] | None = None) -> None:
        self.client = client
        self._bulk_support: dict[str, bool] = dict(bulk_tables or {})

    def write(
        self,
        table: str,
        entity_set: str,
        records: Iterable[Mapping[str, Any]],
        operation: str = "upsert",
        *,
        key: Sequence[str] = (),
        strategy: str = "auto",
        batch_size: int | None = None,
        max_concurrency: int | None = None,
    ) -> WriteRun:
        if operation not in BULK_ACTIONS:
            raise ValueError(f"operation must be one of {sorted(BULK_ACTIONS)}, not {operation!r}")
        if operation == "upsert" and not key:
            raise ValueError("an upsert needs key=(<alternate key columns>) or key=(<primary id column>,)")
        identifier(table, "table")  # names reach URLs and @odata.type: letters, digits and '_' only
        identifier(entity_set, "entity set")
        summary = WriteSummary(strategy=strategy)
        run = _Run(self, table, entity_set, operation, tuple(key), strategy, batch_size, max_concurrency, summary)
        return WriteRun(run.results(records), summary)

    def supports_bulk(self, table: str) -> bool | None:
        return self._bulk_support.get(table)

    def mark_bulk(self, table: str, supported: bool) -> None:
        self._bulk_support[table] = supported


class _Run:
    def __init__(
        self,
        planner: WritePlanner,
        table: str,
        entity_set: str,
        operation: str,
        key: tuple[str, ...],
        strategy: str,
        batch_size: int | None,
        max_concurrency: int | None,
        summary: WriteSummary,
    ) -> None:
        self.planner = planner
        self.client = planner.client
        self.table = table
        self.entity_set = entity_set
        self.operation = operation
        self.key = key
        self.strategy = strategy
        self.batch_size = batch_size
        self.concurrency = max(
            1, min(max_concurrency or self.client.options.max_concurrency, self.client.governor.ceiling)
        )
        self.summary = summary

    def _mode(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "batch" if self.planner.supports_bulk(self.table) is False else "bulk"

    def _chunk_size(self, mode: str) -> int:
        size = self.batch_size or DEFAULT_CHUNK[mode]
        return min(size, MAX_BATCH_OPERATIONS) if mode == "batch" else size

    def results(self, records: Iterable[Mapping[str, Any]]) -> Iterator[RecordResult]:
        started = time.monotonic()
        pending: dict[Future[list[RecordResult]], _Chunk] = {}
        in_flight_keys: set[str] = set()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="dv-write") as pool:
            for chunk, early in self._chunks(records):
                for result in early:
                    self.summary.add(result)
                    yield result
                # Never two requests writing the same key at once; and keep at most 2 x concurrency chunks.
                while pending and (chunk.keys & in_flight_keys or len(pending) >= 2 * self.concurrency):
                    yield from self._collect(pending, in_flight_keys, return_when=FIRST_COMPLETED)
                self.summary.chunks += 1
                # Each chunk in a copy of this thread's context: its requests' spans stay in the run's trace.
                pending[pool.submit(contextvars.copy_context().run, self._execute, chunk, self._mode())] = chunk
                in_flight_keys |= chunk.keys
            while pending:
                yield from self._collect(pending, in_flight_keys, return_when=FIRST_COMPLETED)
        self.summary.seconds = time.monotonic() - started
        if self.strategy == "auto":
            self.summary.strategy = f"auto ({self._mode()})"

    def _collect(
        self, pending: dict[Future[list[RecordResult]], _Chunk], in_flight: set[str], *, return_when: str
    ) -> Iterator[RecordResult]:
        done, _ = wait(list(pending), return_when=return_when)
        for future in done:
            chunk = pending.pop(future)
            in_flight -= chunk.keys
            for result in future.result():
                self.summary.add(result)
                yield result

    def _chunks(self, records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[_Chunk, list[RecordResult]]]:
        size = self._chunk_size(self._mode())
        items: dict[str, tuple[int, dict[str, Any], dict[str, Any] | None]] = {}
        early: list[RecordResult] = []
        for index, record in enumerate(records):
            values = dict(record)
            key_values = {k: values.get(k) for k in self.key} if self.key else None
            if key_values is not None and any(v is None for v in key_values.values()):
                early.append(
                    RecordResult(
                        index,
                        "failed",
                        key_values,
                        code="MissingKey",
                        message=f"no value for key column(s) {list(self.key)}",
                    )
                )
                continue
            refused = _refused_key(key_values)
            if refused is not None:
                early.append(RecordResult(index, "failed", key_values, code="InvalidKey", message=str(refused)))
                continue
            marker = key_text(key_values) if key_values is not None else f"#{index}"
            if marker in items:
                # Duplicate key inside the chunk: last one wins; the earlier one is reported as collapsed.
                earlier = items.pop(marker)
                early.append(
                    RecordResult(
                        earlier[0], "duplicate", earlier[2], message="superseded by a later record with the same key"
                    )
                )
            items[marker] = (index, values, key_values)
            if len(items) >= size:
                yield _Chunk(list(items.values()), set(items)), early
                items, early = {}, []
        if items or early:
            yield _Chunk(list(items.values()), set(items)), early

    # -- executing one chunk -----------------------------------------------------------------------
    def _execute(self, chunk: _Chunk, mode: str) -> list[RecordResult]:
        if not chunk.items:
            return []
        # Keys no URL path can carry ('/' in a key: INV/2024/0001) are found by queries, then written by id.
        by_query = [item for item in chunk.items if item[2] is not None and needs_query_addressing(item[2])]
        if by_query:
            rest = [item for item in chunk.items if item not in by_query]
            return self._by_query(by_query) + self._execute(_Chunk(rest, chunk.keys), mode)
        if mode == "single":
            return [self._single(index, record, key) for index, record, key in chunk.items]
        if mode == "batch":
            return self._batch(chunk.items)
        try:
            return self._bulk(chunk.items)
        except DataverseError as exc:
            if exc.status == 429:
                return [self._failed(i, k, exc) for i, _, k in chunk.items]
            if self.strategy == "auto" and any(h in exc.message for h in BULK_UNSUPPORTED_HINTS):
                self.planner.mark_bulk(self.table, False)
                return self._batch(chunk.items)
            if exc.code == SQL_TIMEOUT_CODE and len(chunk.items) > 1:
                half = len(chunk.items) // 2  # the request was too large: split and retry
                return self._execute(_Chunk(chunk.items[:half], set()), "bulk") + self._execute(
                    _Chunk(chunk.items[half:], set()), "bulk"
                )
            # One bad record fails the atomic request: isolate it, let the good ones land.
            self.summary.isolated_chunks += 1
            return self._batch(chunk.items)

    def _bulk(self, items: list[tuple[int, dict[str, Any], dict[str, Any] | None]]) -> list[RecordResult]:
        targets = [self._target(record, key) for _, record, key in items]
        response = self.client.bulk(self.entity_set, BULK_ACTIONS[self.operation], targets)
        if self.operation == "create":
            ids = response.json().get("Ids", [])
            return [
                RecordResult(i, "created", k, id=str(ids[n]) if n < len(ids) else None)
                for n, (i, _, k) in enumerate(items)
            ]
        self.planner.mark_bulk(self.table, True)
        return [RecordResult(i, "ok", k) for i, _, k in items]

    def _target(self, record: dict[str, Any], key: dict[str, Any] | None) -> dict[str, Any]:
        target = {"@odata.type": f"Microsoft.Dynamics.CRM.{self.table}"}
        if self.operation == "upsert" and key is not None and not self._is_primary_key():
            target["@odata.id"] = entity_path(self.entity_set, key)
            # Key columns named by @odata.id must not repeat in the body (the create path fails otherwise).
            target.update({k: v for k, v in record.items() if k not in key})
        else:
            target.update(record)
        return target

    def _is_primary_key(self) -> bool:
        return self.key == (f"{self.table}id",)

    def _operation(self, record: dict[str, Any], key: dict[str, Any] | None) -> Operation:
        if self.operation == "create":
            return Operation("POST", self.entity_set, record)
        if key is None:
            raise ValueError(f"{self.operation} needs the record's key columns")
        body = {k: v for k, v in record.items() if k not in key} if not self._is_primary_key() else record
        headers = {"If-Match": "*"} if self.operation == "update" else {}
        return Operation("PATCH", entity_path(self.entity_set, self._address(key)), body, headers)

    def _address(self, key: dict[str, Any]) -> dict[str, Any] | str:
        """A primary key is addressed by its bare GUID (``accounts(<id>)``), an alternate key by name."""
        return str(key[self.key[0]]) if self._is_primary_key() else key

    def _by_query(self, items: list[tuple[int, dict[str, Any], dict[str, Any] | None]]) -> list[RecordResult]:
        """Records addressed by a query: their ids found QUERY_KEYS_PER_FILTER at a time, then one ``$batch``
        of writes by id (a create with the key in the body where none exists). A writer racing between the
        query and the write (a create of the same key, a delete) is absorbed one record at a time."""
        if self.operation == "create":
            return self._batch(items)  # a create names no record
        ids: dict[int, str | None] = {}
        try:
            for start in range(0, len(items), QUERY_KEYS_PER_FILTER):
                group = items[start : start + QUERY_KEYS_PER_FILTER]
                found = self.client.find_ids(self.entity_set, [k or {} for _, _, k in group], table=self.table)
                ids.update((index, record_id) for (index, _, _), record_id in zip(group, found, strict=True))
        except DataverseError as exc:
            return [self._failed(i, k, exc) for i, _, k in items]
        if self.operation == "update":
            missing = [
                RecordResult(i, "failed", k, code=RECORD_NOT_FOUND_CODE, message="no record has this key")
                for i, _, k in items
                if ids[i] is None
            ]
            items = [item for item in items if ids[item[0]] is not None]
        else:
            missing = []

        def by_id(index: int, record: dict[str, Any], key: dict[str, Any] | None) -> Operation:
            body = {k: v for k, v in record.items() if not (k.startswith("_") and k.endswith("_value"))}
            record_id = ids[index]
            if record_id is None:
                return Operation("POST", self.entity_set, body)
            return Operation("PATCH", entity_path(self.entity_set, record_id), body, {"If-Match": "*"})

        results = self._batch(items, build=by_id)
        raced = {r.index for r in results if r.code in (DUPLICATE_KEY_CODE, RECORD_NOT_FOUND_CODE)}
        redone = [self._single(*item) for item in items if item[0] in raced]
        return missing + [r for r in results if r.index not in raced] + redone

    def _batch(
        self,
        items: list[tuple[int, dict[str, Any], dict[str, Any] | None]],
        *,
        build: Callable[[int, dict[str, Any], dict[str, Any] | None], Operation] | None = None,
    ) -> list[RecordResult]:
        results: dict[int, RecordResult] = {}
        remaining = items
        for attempt in range(PART_RETRY_ATTEMPTS):
            operations = [
                build(index, record, key) if build else self._operation(record, key) for index, record, key in remaining
            ]
            try:
                replies = self.client.execute_batch(
                    operations, continue_on_error=True, idempotent=self.operation != "create"
                )
            except DataverseError as exc:
                return [*results.values(), *(self._failed(i, k, exc) for i, _, k in remaining)]
            retry: list[tuple[int, dict[str, Any], dict[str, Any] | None]] = []
            for (index, record, key), reply in zip(remaining, replies, strict=True):
                retryable = reply.status in RETRYABLE_PART_STATUSES or reply.code == UNKNOWN_OUTCOME
                if reply.ok:
                    results[index] = RecordResult(
                        index, "created" if self.operation == "create" else "ok", key, id=reply.entity_id
                    )
                elif retryable and attempt < PART_RETRY_ATTEMPTS - 1 and self.operation != "create":
                    retry.append((index, record, key))
                    if reply.retry_after_s:
                        self.client.governor.throttled(reply.retry_after_s)
                else:
                    results[index] = RecordResult(index, "failed", key, code=reply.code, message=reply.message)
            if not retry:
                break
            remaining = retry
        return [results[i] for i, _, _ in items if i in results]

    def _single(self, index: int, record: dict[str, Any], key: dict[str, Any] | None) -> RecordResult:
        try:
            if self.operation == "create":
                return RecordResult(index, "created", key, id=self.client.create(self.entity_set, record))
            if key is None:
                raise ValueError(f"{self.operation} needs the record's key columns")
            body = {k: v for k, v in record.items() if k not in key} if not self._is_primary_key() else record
            if self.operation == "update":
                self.client.update(self.entity_set, self._address(key), body, table=self.table)
                return RecordResult(index, "updated", key)
            created = self.client.upsert(self.entity_set, self._address(key), body, table=self.table)
            return RecordResult(index, "created" if created else "updated", key)
        except DataverseError as exc:
            return self._failed(index, key, exc)
        except KeyValueRefused as refused:
            return RecordResult(index, "failed", key, code="InvalidKey", message=str(refused))

    @staticmethod
    def _failed(index: int, key: Mapping[str, Any] | None, exc: DataverseError) -> RecordResult:
        return RecordResult(index, "failed", key, code=exc.code, message=exc.message)


def _refused_key(key: Mapping[str, Any] | None) -> KeyValueRefused | None:
    """Why no request can address this record by its key (a dead letter for it alone), or None."""
    if key is None:
        return None
    try:
        for name, value in key.items():
            check_key_value(name, value, in_path=False)  # a '/' is found by a query instead
        key_text(key)
    except KeyValueRefused as refused:
        return refused
    return None
