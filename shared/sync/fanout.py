"""Fan-out of large source files: a file above the job's threshold is split into row ranges, one queue
work item each; queue workers write the ranges side by side, and the last to finish aggregates the run
report and marks the file processed."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from shared.config import read_int
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.sync.hashes import NoIndex
from shared.sync.jobs import CsvSource, InboundJob, JsonlSource
from shared.sync.rows import SourceRow
from shared.sync.run import RunReport, SyncRun
from shared.sync.sources import BlobFiles

if TYPE_CHECKING:
    from shared.sync.engine import SyncContext, SyncStore

logger = logging.getLogger(__name__)

CHUNK_QUEUE = "sync-chunks"  # fan-out work items (the queue trigger in shared.sync.functions names it too)
CHUNK_ROWS = 10_000  # rows per fan-out work item
AGGREGATED_COUNTERS = ("written", "created", "updated", "failed", "dead_lettered", "requests", "throttles")


def chunk_concurrency() -> int:
    """SYNC_CHUNK_CONCURRENCY: Dataverse requests in flight per fan-out work item; together the work items
    of every instance stay within the shared budget (shared.dataverse.budget), whatever this is."""
    return read_int(EnvVars.SYNC_CHUNK_CONCURRENCY)


class ChunkQueue(Protocol):
    def enqueue(self, queue: str, message: dict[str, Any]) -> Any: ...


def fan_out(job: InboundJob, files: BlobFiles, queue: ChunkQueue, report: RunReport, *, blob: str, etag: str) -> bool:
    """Above the job's threshold, split the file into row ranges and enqueue them; True when fanned out."""
    # Every record ends at a line end (CSV records may span several), so the line count bounds the record
    # count from above: below the threshold that settles it without parsing the file twice.
    if files.line_count(blob) <= job.fan_out_threshold:
        return False
    total = sum(1 for _ in files.rows(blob, etag))
    if total <= job.fan_out_threshold:
        return False
    chunks = [(start, min(start + CHUNK_ROWS - 1, total)) for start in range(1, total + 1, CHUNK_ROWS)]
    report.chunks += len(chunks)
    report.rows_read += total
    name = files.job
    planned = {"job": name, "run_id": report.run_id, "blob": blob, "etag": etag, "chunks": len(chunks), "rows": total}
    for number, (first, last) in enumerate(chunks, start=1):
        queue.enqueue(CHUNK_QUEUE, {**planned, "chunk_id": f"{number:04}", "first_line": first, "last_line": last})
    log_event(logger, "sync_fanned_out", job=name, blob=blob, rows=total, chunks=len(chunks))
    return True


def run_chunk(job: InboundJob, ctx: SyncContext, item: Mapping[str, Any]) -> dict[str, Any]:
    """A queue worker's part of a fanned-out run: write one row range and store its report (failed ones
    too); the last chunk to finish aggregates the run report and marks the file processed."""
    name, run_id, chunk_id = str(item["job"]), str(item["run_id"]), str(item["chunk_id"])
    source = job.source
    if not isinstance(source, CsvSource | JsonlSource):
        raise ValueError(f"chunk {chunk_id}: job {name!r} does not read files; only file sources fan out")
    first, last = int(item["first_line"]), int(item["last_line"])
    files = BlobFiles(name, source, ctx.storage)
    with SyncRun(name, "chunk", ctx.storage, ctx.client, run_id=f"{run_id}#{chunk_id}", chunk_of=run_id) as run:
        rows = (r for r in files.rows(str(item["blob"]), str(item["etag"])) if first <= r.line)
        writer = ctx.writer(job, NoIndex(), concurrency=chunk_concurrency())
        writer.write(_until(rows, last), run.report, run.dead)
    _aggregate(name, run_id, item, files, ctx.storage)
    return run.report.to_dict()


def _aggregate(name: str, run_id: str, item: Mapping[str, Any], files: BlobFiles, storage: SyncStore) -> None:
    chunks = storage.chunk_reports(name, run_id)
    if len(chunks) != int(item["chunks"]):
        return
    # The last one in aggregates (idempotent if two race here).
    total = storage.get_report(name, run_id) or {"job": name, "run_id": run_id}
    for counter in AGGREGATED_COUNTERS:
        total[counter] = sum(int(c.get(counter) or 0) for c in chunks)
    total["rows_read"] = int(item["rows"])
    total["chunks"] = len(chunks)
    failed = [c for c in chunks if c["status"] != "succeeded"]
    total["status"] = "failed" if failed else "succeeded"
    if failed:
        total["error"] = f"{len(failed)} of {len(chunks)} chunks failed; first: {failed[0].get('error')}"
    storage.save_report(name, run_id, total)
    if not failed:
        files.done(str(item["blob"]), str(item["etag"]))
    log_event(logger, "sync_run_report", **{k: v for k, v in total.items() if v is not None})


def _until(rows: Iterator[SourceRow], last: int) -> Iterator[SourceRow]:
    for row in rows:
        if row.line > last:
            return
        yield row
