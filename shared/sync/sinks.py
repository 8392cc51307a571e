"""What a sync run writes to: Dataverse (mapped rows through the write planner, with per-record results,
dead letters and the change index), or, for outbound runs, a blob of JSON Lines or an HTTP endpoint."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared.dataverse.addressing import key_text
from shared.logging import log_event
from shared.mapping.mapper import Mapper, Rejection
from shared.sync.hashes import ChangeIndex, row_hash
from shared.sync.jobs import BlobSink, HttpSink, InboundJob
from shared.sync.rows import SourceRow
from shared.sync.run import DeadLetters, RunReport

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


class WriteOutcome(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def status(self) -> str: ...  # created | updated | ok | failed | duplicate

    @property
    def code(self) -> str | None: ...

    @property
    def message(self) -> str | None: ...


class RecordWriter(Protocol):
    """The write planner (``shared.dataverse.planner.WritePlanner``): records in, one outcome per record out."""

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
    ) -> Iterable[WriteOutcome]: ...


@dataclass
class DataverseWriter:
    """Maps each row, skips it when its columns are unchanged since the last confirmed write, upserts the
    rest by the job's key and counts every outcome in the run's report; a rejected or refused row becomes a
    dead letter naming its source file and line."""

    planner: RecordWriter
    job: InboundJob
    mapper: Mapper
    index: ChangeIndex
    concurrency: int | None = None

    def write(
        self, rows: Iterable[SourceRow], report: RunReport, dead: DeadLetters, progress: Progress | None = None
    ) -> None:
        job = self.job
        pending: dict[int, tuple[SourceRow, str, str]] = {}  # planner index -> (row, key, hash)

        def tick() -> None:
            if progress:
                progress(1)

        def mapped() -> Iterator[dict[str, Any]]:
            index = 0
            for row in rows:
                report.rows_read += 1
                result = self.mapper.map(row.values)
                if isinstance(result, Rejection):
                    dead.add(row.values, code=result.code, reason=result.reason, field=result.field, source=_where(row))
                    tick()
                    continue
                key = key_text({k: result[k] for k in job.key})
                digest = row_hash(result)
                if self.index.get(key) == digest:
                    report.unchanged += 1
                    tick()
                    continue
                pending[index] = (row, key, digest)
                index += 1
                yield result

        results = self.planner.write(
            job.table,
            job.entity_set,
            mapped(),
            "upsert",
            key=job.key,
            strategy=job.strategy,
            batch_size=job.batch_size,
            max_concurrency=self.concurrency,
        )
        for result in results:
            tick()
            row, key, digest = pending.pop(result.index)
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
                self.index.set(key, digest)


def _where(row: SourceRow) -> dict[str, Any]:
    return {"blob": row.blob, "line": row.line, "etag": row.etag}


class BlobWriter(Protocol):
    def put_blob(self, container: str, name: str, data: bytes) -> None: ...


@dataclass
class BlobJsonlSink:
    """One JSON Lines blob per delivery, named after the delta link it continues from: a run that crashed
    before saving its delta link re-writes the same blob instead of a second one."""

    spec: BlobSink
    storage: BlobWriter

    def deliver(self, job: str, changes: list[dict[str, Any]], previous: str | None) -> None:
        marker = hashlib.sha256((previous or "initial").encode()).hexdigest()[:16]
        blob = f"{job}/{marker}.jsonl"
        body = "".join(json.dumps(c, default=str) + "\n" for c in changes).encode()
        self.storage.put_blob(self.spec.container, blob, body)
        log_event(logger, "sync_outbound_written", job=job, blob=blob, changes=len(changes))


@dataclass
class HttpPostSink:
    """POSTs ``{"job", "changes"}`` in batches; a batch the endpoint refuses fails the run, which keeps its
    delta link, so the next run delivers the same changes again."""

    spec: HttpSink
    session: requests.Session | None = None

    def deliver(self, job: str, changes: list[dict[str, Any]], previous: str | None) -> None:
        from shared.outgoing_http import HTTP_SINK, HttpCaller
        from shared.sync.http_sink import post_changes

        post_changes(self.spec.url, job, changes, self.spec.batch_size, caller=HttpCaller(self.session, HTTP_SINK))


class Sink(Protocol):
    def deliver(self, job: str, changes: list[dict[str, Any]], previous: str | None) -> None: ...


def outbound_sink(spec: BlobSink | HttpSink, storage: BlobWriter, session: requests.Session | None = None) -> Sink:
    return BlobJsonlSink(spec, storage) if isinstance(spec, BlobSink) else HttpPostSink(spec, session)
