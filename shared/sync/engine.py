"""Inbound sync runs: source files or an API -> mapping -> write planner -> run report; and the replay of
a job's dead letters.

A run holds the job's lease (``shared.sync.run``), reads each unprocessed source file as a stream, dead-
letters every row the mapping rejects or Dataverse refuses, and skips rows whose columns did not change
since the last successful write (``shared.sync.hashes``). A file is marked processed only after all its
rows were written or dead-lettered, so a crashed run re-sends from there; upserts keep it idempotent.
Files above the job's threshold fan out to queue workers (``shared.sync.fanout``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from shared.dataverse.client import DataverseClient
from shared.dataverse.planner import WritePlanner
from shared.dataverse.schema import TableMetadata, TableSchema
from shared.mapping.mapper import Mapper
from shared.sync.fanout import fan_out
from shared.sync.hashes import BlobStore, ChangeIndex, HashIndex
from shared.sync.jobs import HttpSource, InboundJob
from shared.sync.rows import SourceRow
from shared.sync.run import RunReport, RunStorage, SyncRun
from shared.sync.sinks import DataverseWriter, Progress, RecordWriter
from shared.sync.sources import ApiPages, BlobFiles, SourceStorage

if TYPE_CHECKING:
    import requests

    from shared.composition import Worker

__all__ = ["RunReport", "SyncContext", "replay_dead_letters", "run_inbound"]


class SyncStore(RunStorage, SourceStorage, BlobStore, Protocol):
    """Everything sync runs ask of storage (``shared.storage.Storage`` in a worker)."""

    def enqueue(self, queue: str, message: dict[str, Any]) -> Any: ...

    def chunk_reports(self, job: str, run_id: str) -> list[dict[str, Any]]: ...

    def get_report(self, job: str, run_id: str) -> dict[str, Any] | None: ...

    def read_dead_letters(self, job: str, run_id: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def remove_dead_letters(self, blobs: list[str]) -> None: ...


class SchemaSource(Protocol):
    def schema(self, table: str) -> TableSchema: ...


class SyncContext:
    """What runs share in a worker: storage, the Dataverse client, table metadata (read once per table)
    and the write planner; unit tests give in-memory ones."""

    def __init__(
        self,
        storage: SyncStore,
        client: DataverseClient,
        *,
        secret: Callable[[str], str] | None = None,  # Key Vault secrets for source auth headers
        metadata: SchemaSource | None = None,
        planner: RecordWriter | None = None,
        http: requests.Session | None = None,  # for HTTP sources and sinks (the worker's); None: one per run
    ) -> None:
        self.storage = storage
        self.client = client
        self.secret = secret
        self.metadata: SchemaSource = metadata or TableMetadata(client)
        self.planner: RecordWriter = planner or WritePlanner(client)
        self.http = http

    @classmethod
    def on(cls, root: Worker) -> SyncContext:
        """The runs' context on a worker's objects (their caches outlive each invocation)."""
        return cls(
            root.storage(), root.dataverse(), secret=root.secret, metadata=root.metadata(), http=root.http_session()
        )

    def schema(self, table: str) -> TableSchema:
        return self.metadata.schema(table)

    def mapper(self, job: InboundJob) -> Mapper:
        return Mapper(job.mapping, job.key, self.schema(job.table))

    def writer(self, job: InboundJob, index: ChangeIndex, *, concurrency: int | None = None) -> DataverseWriter:
        return DataverseWriter(self.planner, job, self.mapper(job), index, concurrency=concurrency)


def run_inbound(
    name: str,
    job: InboundJob,
    ctx: SyncContext,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> RunReport:
    with SyncRun(name, "inbound", ctx.storage, ctx.client, run_id=run_id) as run:
        if run.skipped:
            return run.report
        report = run.report
        index = HashIndex(ctx.storage, name)
        writer = ctx.writer(job, index)
        if isinstance(job.source, HttpSource):
            api = ApiPages(name, job.source, ctx.storage, job.watermark_field, ctx.secret, ctx.http)
            report.files += 1
            writer.write(api.rows(), report, run.dead, progress)
            index.flush()
            api.done()  # the watermark moves only after every row it covers was handled
            return report
        files = BlobFiles(name, job.source, ctx.storage)
        for blob, etag in files.pending():
            report.files += 1
            if fan_out(job, files, ctx.storage, report, blob=blob, etag=etag):
                continue
            writer.write(files.rows(blob, etag), report, run.dead, progress)
            index.flush()
            files.done(blob, etag)
        report.files_skipped = files.skipped
    return report


def replay_dead_letters(name: str, job: InboundJob, ctx: SyncContext, *, run_id: str | None = None) -> RunReport:
    """Re-send a job's dead letters (all runs, or one) after a fix to the data, mapping or permissions.

    They go through the same mapping and writer; rows that still fail land in this replay's own
    dead-letter file, and the replayed files are removed after the replay succeeded, so nothing is
    replayed twice.
    """
    with SyncRun(name, "replay", ctx.storage, ctx.client) as run:
        if run.skipped:
            return run.report
        own = run.dead.name
        letters = [(blob, letter) for blob, letter in ctx.storage.read_dead_letters(name, run_id) if blob != own]
        blobs = sorted({blob for blob, _ in letters})
        rows = (SourceRow(blob, "", n, dict(letter["record"])) for n, (blob, letter) in enumerate(letters, start=1))
        index = HashIndex(ctx.storage, name)
        ctx.writer(job, index).write(rows, run.report, run.dead)
        index.flush()  # the replayed rows' hashes, as after any file
        run.report.files = len(blobs)
    ctx.storage.remove_dead_letters(blobs)
    return run.report
