"""Inbound sync runs: source files -> mapping -> write planner -> run report.

A run holds the job's blob lease (another run finding it held logs a skip and exits), reads each
unprocessed source file as a stream, dead-letters every row the mapping rejects or Dataverse refuses,
and skips rows whose columns did not change since the last successful write (a hash per key in Table
Storage, updated only after Dataverse confirmed the write). A file is marked processed only after all
its rows were written or dead-lettered, so a crashed run re-sends from there; upserts keep it idempotent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.config import read_int
from shared.dataverse.addressing import key_text, table_definition_path
from shared.dataverse.client import DataverseClient
from shared.dataverse.planner import WritePlanner
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.sync.jobs import CsvSource, HttpSource, InboundJob, JsonlSource
from shared.sync.mapping import Mapper, Rejection, TableSchema
from shared.sync.storage import SourceRow, SyncStorage, table_key

logger = logging.getLogger(__name__)

HASHES_CONTAINER = "sync-hashes"
CHUNK_ROWS = 10_000  # rows per fan-out work item
HASH_FLUSH_EVERY = 20_000  # keys between index writes: a crash re-sends at most this many rows (idempotently)


def chunk_concurrency() -> int:
    """SYNC_CHUNK_CONCURRENCY: Dataverse requests in flight per fan-out work item (main.bicep derives the
    instance cap from it, so that the fan-out stays within the app user's Dataverse budget)."""
    return read_int(EnvVars.SYNC_CHUNK_CONCURRENCY)


@dataclass
class RunReport:
    job: str
    run_id: str
    started_at: str
    status: str = "running"  # running | succeeded | skipped | failed
    files: int = 0
    chunks: int = 0
    files_skipped: int = 0
    rows_read: int = 0
    written: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duration_s: float = 0.0
    records_per_s: float = 0.0
    throttles: int = 0
    requests: int = 0
    error: str | None = None
    dead_letter_blob: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyncContext:
    storage: SyncStorage
    client: DataverseClient
    schemas: dict[str, TableSchema] = field(default_factory=dict)
    secret: Callable[[str], str] | None = None  # Key Vault secrets for source auth headers

    def schema(self, table: str) -> TableSchema:
        """The table's metadata, read once per worker."""
        if table not in self.schemas:
            entity = self.client.request("GET", table_definition_path(table), params={"$expand": "Attributes"}).json()
            picklists = self.client.request(
                "GET",
                f"{table_definition_path(table)}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
            ).json()
            self.schemas[table] = TableSchema.from_metadata(entity, picklists.get("value", []))
        return self.schemas[table]


def row_hash(columns: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(columns, sort_keys=True, default=str).encode()).hexdigest()[:32]


def run_inbound(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    *,
    run_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunReport:
    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = RunReport(name, run_id, datetime.now(UTC).isoformat())
    started = time.monotonic()
    lease = ctx.storage.lease(name)
    if lease is None:
        report.status = "skipped"
        log_event(logger, "sync_run_skipped", job=name, reason="another run holds the job's lease")
        return report
    requests_before, throttles_before = ctx.client.requests_sent, ctx.client.governor.throttles
    dead = ctx.storage.dead_letters(name, run_id)
    try:
        schema = ctx.schema(job.table)
        mapper = Mapper(job, schema)
        hashes = _Hashes(ctx.storage, name)
        processed = ctx.storage.processed(name)
        source = job.source
        if isinstance(source, HttpSource):
            _run_http(name, job, ctx, source, mapper, hashes, dead, report, progress)
        else:
            _run_files(name, job, ctx, source, mapper, hashes, processed, dead, report, progress)
        report.status = "fanned_out" if report.chunks else "succeeded"
    except Exception as exc:
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        dead.close()
        lease.release()
        report.dead_lettered = dead.count
        report.dead_letter_blob = dead.name if dead.count else None
        report.duration_s = round(time.monotonic() - started, 3)
        report.records_per_s = round(report.written / report.duration_s, 1) if report.duration_s else 0.0
        report.requests = ctx.client.requests_sent - requests_before
        report.throttles = ctx.client.governor.throttles - throttles_before
        ctx.storage.save_report(name, run_id, report.to_dict())
        log_event(logger, "sync_run_report", **{k: v for k, v in report.to_dict().items() if v is not None})
    return report


def _write_file(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    mapper: Mapper,
    hashes: _Hashes | _NoHashes,
    rows: Iterator[SourceRow],
    dead: Any,
    report: RunReport,
    progress: Callable[[int], None] | None = None,
    *,
    concurrency: int | None = None,
) -> None:
    pending: dict[int, tuple[SourceRow, dict[str, Any], str, str]] = {}  # planner index -> (row, columns, key, hash)

    def mapped() -> Iterator[dict[str, Any]]:
        index = 0
        for row in rows:
            report.rows_read += 1
            result = mapper.map(row.values)
            if isinstance(result, Rejection):
                dead.add(row.values, code=result.code, reason=result.reason, field=result.field, source=_where(row))
                if progress:
                    progress(1)
                continue
            key = key_text({k: result[k] for k in job.key})
            digest = row_hash(result)
            if hashes.get(key) == digest:
                report.unchanged += 1
                if progress:
                    progress(1)
                continue
            pending[index] = (row, result, key, digest)
            index += 1
            yield result

    planner = WritePlanner(ctx.client)
    run = planner.write(
        job.table,
        job.entity_set,
        mapped(),
        "upsert",
        key=job.key,
        strategy=job.strategy,
        batch_size=job.batch_size,
        max_concurrency=concurrency,
    )
    for result in run:
        if progress:
            progress(1)
        row, _, key, digest = pending.pop(result.index)
        if result.status == "failed":
            report.failed += 1
            dead.add(
                row.values,
                code=result.code or "WriteFailed",
                reason=result.message or "Dataverse refused the write",
                source=_where(row),
            )
        elif result.status == "duplicate":
            continue  # a later row with the same key in this file superseded it
        else:
            report.written += 1
            report.created += result.status == "created"
            report.updated += result.status == "updated"
            hashes.set(key, digest)


def _where(row: SourceRow) -> dict[str, Any]:
    return {"blob": row.blob, "line": row.line, "etag": row.etag}


class _Hashes:
    """Last written column hash per record key: one gzipped JSON blob per job, loaded once per run and
    written after confirmed writes (every ``HASH_FLUSH_EVERY`` keys and at the end of each file).

    One blob rather than a Table entity per key: a table write per record held the sync engine to about
    15 % of Dataverse's ceiling (BENCHMARKS.md). The job's lease keeps two runs from writing it at once;
    fan-out chunks do not use it."""

    def __init__(self, storage: SyncStorage, job: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        self._blob = storage.container(HASHES_CONTAINER).get_blob_client(f"{table_key(job)}.json.gz")
        try:
            self._known: dict[str, str] = json.loads(gzip.decompress(self._blob.download_blob().readall()))
        except ResourceNotFoundError:
            self._known = {}
        self._pending = 0

    def get(self, key: str) -> str | None:
        return self._known.get(key)

    def set(self, key: str, digest: str) -> None:
        self._known[key] = digest
        self._pending += 1
        if self._pending >= HASH_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        body = gzip.compress(json.dumps(self._known, separators=(",", ":")).encode(), compresslevel=1)
        self._blob.upload_blob(body, overwrite=True)
        self._pending = 0


def replay_dead_letters(name: str, job: InboundJob, ctx: SyncContext, *, run_id: str | None = None) -> RunReport:
    """Re-send a job's dead letters (all runs, or one) after a fix to the data, mapping or permissions.

    They go through the same mapping and writer; rows that still fail land in this replay's own
    dead-letter file, and the replayed files are removed, so nothing is replayed twice.
    """
    replay_id = f"replay-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = RunReport(name, replay_id, datetime.now(UTC).isoformat())
    started = time.monotonic()
    lease = ctx.storage.lease(name)
    if lease is None:
        report.status = "skipped"
        return report
    dead = ctx.storage.dead_letters(name, replay_id)
    try:
        letters = [(blob, letter) for blob, letter in ctx.storage.read_dead_letters(name, run_id) if blob != dead.name]
        blobs = sorted({blob for blob, _ in letters})
        rows = (SourceRow(blob, "", n, dict(letter["record"])) for n, (blob, letter) in enumerate(letters, start=1))
        hashes = _Hashes(ctx.storage, name)
        _write_file(name, job, ctx, Mapper(job, ctx.schema(job.table)), hashes, rows, dead, report)
        hashes.flush()  # the replayed rows' hashes, as after any file
        report.files = len(blobs)
        report.status = "succeeded"
    finally:
        dead.close()
        lease.release()
        report.dead_lettered = dead.count
        report.dead_letter_blob = dead.name if dead.count else None
        report.duration_s = round(time.monotonic() - started, 3)
        ctx.storage.save_report(name, replay_id, report.to_dict())
        log_event(logger, "sync_replay_report", **{k: v for k, v in report.to_dict().items() if v is not None})
    if report.status == "succeeded":
        ctx.storage.remove_dead_letters(blobs)
    return report


def _run_files(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    source: CsvSource | JsonlSource,
    mapper: Mapper,
    hashes: _Hashes,
    processed: dict[str, str],
    dead: Any,
    report: RunReport,
    progress: Callable[[int], None] | None,
) -> None:
    """Each source file not yet processed (same name and ETag), oldest first; large ones fan out."""
    for blob, etag in ctx.storage.list_source_blobs(source.container, source.prefix):
        if processed.get(blob) == etag:
            report.files_skipped += 1
            continue
        report.files += 1
        if _fan_out(name, job, ctx, source, blob, etag, report):
            continue
        _write_file(name, job, ctx, mapper, hashes, _source_rows(ctx, source, blob, etag), dead, report, progress)
        hashes.flush()
        ctx.storage.mark_processed(name, blob, etag)


def _source_rows(ctx: SyncContext, source: CsvSource | JsonlSource, blob: str, etag: str) -> Iterator[SourceRow]:
    if isinstance(source, CsvSource):
        return ctx.storage.read_csv(
            source.container, blob, etag, encoding=source.encoding, delimiter=source.delimiter, headers=source.headers
        )
    return ctx.storage.read_jsonl(source.container, blob, etag, encoding=source.encoding)


def _fan_out(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    source: CsvSource | JsonlSource,
    blob: str,
    etag: str,
    report: RunReport,
) -> bool:
    """Above the job's threshold, split the file into row ranges and enqueue them; True when fanned out."""
    from shared.sync.storage import CHUNK_QUEUE

    # Every record ends at a line end (CSV records may span several), so the line count bounds the record
    # count from above: below the threshold that settles it without parsing the file twice.
    if ctx.storage.count_lines(source.container, blob) <= job.fan_out_threshold:
        return False
    total = sum(1 for _ in _source_rows(ctx, source, blob, etag))
    if total <= job.fan_out_threshold:
        return False
    chunks = [(start, min(start + CHUNK_ROWS - 1, total)) for start in range(1, total + 1, CHUNK_ROWS)]
    report.chunks += len(chunks)
    report.rows_read += total
    planned = {"job": name, "run_id": report.run_id, "blob": blob, "etag": etag, "chunks": len(chunks), "rows": total}
    for number, (first, last) in enumerate(chunks, start=1):
        ctx.storage.enqueue(
            CHUNK_QUEUE, {**planned, "chunk_id": f"{number:04}", "first_line": first, "last_line": last}
        )
    log_event(logger, "sync_fanned_out", job=name, blob=blob, rows=total, chunks=len(chunks))
    return True


def run_chunk(job: InboundJob, ctx: SyncContext, item: Mapping[str, Any]) -> dict[str, Any]:
    """A queue worker's part of a fanned-out run: write one row range and store its report; the last chunk
    to finish aggregates the run report and marks the file processed."""
    name, run_id, chunk_id = str(item["job"]), str(item["run_id"]), str(item["chunk_id"])
    report = RunReport(name, f"{run_id}#{chunk_id}", datetime.now(UTC).isoformat())
    started = time.monotonic()
    source = job.source
    if not isinstance(source, CsvSource | JsonlSource):
        raise ValueError(f"chunk {item.get('chunk_id')}: job {name!r} does not read files; only file sources fan out")
    first, last = int(item["first_line"]), int(item["last_line"])
    rows = (r for r in _source_rows(ctx, source, str(item["blob"]), str(item["etag"])) if first <= r.line)
    dead = ctx.storage.dead_letters(name, f"{run_id}-{chunk_id}")
    requests_before, throttles_before = ctx.client.requests_sent, ctx.client.governor.throttles
    try:
        mapper = Mapper(job, ctx.schema(job.table))
        _write_file(
            name, job, ctx, mapper, _NoHashes(), _until(rows, last), dead, report, concurrency=chunk_concurrency()
        )
        report.status = "succeeded"
    finally:
        dead.close()
    report.dead_lettered = dead.count
    report.duration_s = round(time.monotonic() - started, 3)
    report.requests = ctx.client.requests_sent - requests_before
    report.throttles = ctx.client.governor.throttles - throttles_before
    ctx.storage.save_chunk_report(name, run_id, chunk_id, report.to_dict())
    chunks = ctx.storage.chunk_reports(name, run_id)
    if len(chunks) == int(item["chunks"]):  # the last one in aggregates (idempotent if two race here)
        total = ctx.storage.get_report(name, run_id) or {"job": name, "run_id": run_id}
        for counter in ("written", "created", "updated", "failed", "dead_lettered", "requests", "throttles"):
            total[counter] = sum(int(c.get(counter) or 0) for c in chunks)
        total["rows_read"] = int(item["rows"])
        total["chunks"] = len(chunks)
        total["status"] = "succeeded" if all(c["status"] == "succeeded" for c in chunks) else "failed"
        ctx.storage.save_report(name, run_id, total)
        ctx.storage.mark_processed(name, str(item["blob"]), str(item["etag"]))
        log_event(logger, "sync_run_report", **{k: v for k, v in total.items() if v is not None})
    return report.to_dict()


def _until(rows: Iterator[SourceRow], last: int) -> Iterator[SourceRow]:
    for row in rows:
        if row.line > last:
            return
        yield row


class _NoHashes:
    """Fan-out chunks always write (upserts are idempotent): loading every key's hash per chunk costs more."""

    def get(self, key: str) -> str | None:
        return None

    def set(self, key: str, digest: str) -> None:
        pass

    def flush(self) -> None:
        pass


WATERMARK_STATE = "watermark"


def _run_http(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    source: HttpSource,
    mapper: Mapper,
    hashes: _Hashes,
    dead: Any,
    report: RunReport,
    progress: Callable[[int], None] | None,
) -> None:
    """Read the API from the last watermark; advance it only after every row it covers was handled."""
    from shared.sync.http_source import iter_http

    previous = ctx.storage.get_state(name, WATERMARK_STATE)
    highest: list[str] = [previous] if previous else []

    def tracked() -> Iterator[SourceRow]:
        for row in iter_http(source, secret=ctx.secret, watermark=previous):
            if job.watermark_field and row.values.get(job.watermark_field) is not None:
                highest.append(str(row.values[job.watermark_field]))
            yield row

    report.files += 1
    _write_file(name, job, ctx, mapper, hashes, tracked(), dead, report, progress)
    hashes.flush()
    if job.watermark_field and highest:
        ctx.storage.set_state(name, WATERMARK_STATE, max(highest))  # ISO dates and numbers-as-padded-text sort
