"""One sync run, whatever its kind: inbound, outbound, replay or a fan-out chunk.

:class:`SyncRun` owns what every kind shares: the run id, the job's lease (a run finding it held is
skipped), the dead-letter writer, the Dataverse request and throttle counts, the report, saving it and
logging it. A plan (``shared.sync.engine``, ``shared.sync.outbound``, ``shared.sync.fanout``) only reads
its source and writes its sink inside ``with SyncRun(...) as run``; whatever way the plan ends, the run
is saved with its status, and a failure with its error.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol

from shared.logging import log_event
from shared.telemetry import record_run, span

logger = logging.getLogger(__name__)

ERROR_TEXT_LIMIT = 500  # characters of the error kept in a report
RunKind = Literal["inbound", "outbound", "replay", "chunk"]


@dataclass
class RunReport:
    job: str
    run_id: str
    started_at: str
    kind: str = "inbound"
    status: str = "running"  # running | succeeded | fanned_out | skipped | failed
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


class DeadLetters(Protocol):
    """Where a run keeps the rows it could not write (``shared.storage.dead_letters.DeadLetterWriter``)."""

    name: str
    count: int

    def add(
        self,
        record: dict[str, Any],
        *,
        code: str,
        reason: str,
        field: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> None: ...

    def close(self) -> None: ...


class Lease(Protocol):
    def release(self) -> None: ...


class RunStorage(Protocol):
    """What a run needs of storage: the job's lease, a dead-letter writer, and a place for its report."""

    def lease(self, job: str) -> Lease | None: ...

    def dead_letters(self, job: str, run_id: str) -> DeadLetters: ...

    def save_report(self, job: str, run_id: str, report: dict[str, Any]) -> None: ...

    def save_chunk_report(self, job: str, run_id: str, chunk_id: str, report: dict[str, Any]) -> None: ...


class Governed(Protocol):
    @property
    def throttles(self) -> int: ...


class RequestCounter(Protocol):
    """The Dataverse client, as far as a run counts its requests and throttles."""

    @property
    def requests_sent(self) -> int: ...

    @property
    def governor(self) -> Governed: ...


def new_run_id(prefix: str = "") -> str:
    """``20261201T195925-3f2a1b``: sortable by start time, unique across instances."""
    return f"{prefix}{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class SyncRun:
    """``with SyncRun(job, kind, storage, client) as run:`` — check ``run.skipped`` first, then work on
    ``run.report`` and ``run.dead`` (present when ``dead_letters``). Chunk runs take no lease (the chunks
    of one file run side by side) and save a chunk report under their parent run."""

    def __init__(
        self,
        job: str,
        kind: RunKind,
        storage: RunStorage,
        client: RequestCounter | None,
        *,
        run_id: str | None = None,
        dead_letters: bool = True,
        chunk_of: str | None = None,
    ) -> None:
        self.job = job
        self.kind = kind
        self._storage = storage
        self._client = client
        self._chunk_of = chunk_of
        self._dead_letters = dead_letters
        self.run_id = run_id or new_run_id("replay-" if kind == "replay" else "")
        self.report = RunReport(job, self.run_id, datetime.now(UTC).isoformat(), kind=kind)
        self.skipped = False
        self._dead: DeadLetters | None = None
        self._lease: Lease | None = None
        self._started = 0.0
        self._requests_before = 0
        self._throttles_before = 0

    @property
    def dead(self) -> DeadLetters:
        if self._dead is None:
            raise RuntimeError("this run keeps no dead letters")  # a plan bug, not a data problem
        return self._dead

    def __enter__(self) -> SyncRun:
        self._started = time.monotonic()
        self._span = span("sync.run", job=self.job, kind=self.kind)
        self._traced = self._span.__enter__()
        try:
            return self._enter()
        except BaseException as exc:
            self._span.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _enter(self) -> SyncRun:
        if self._chunk_of is None:
            self._lease = self._storage.lease(self.job)
            if self._lease is None:
                self.skipped = True
                self.report.status = "skipped"
                log_event(logger, "sync_run_skipped", job=self.job, kind=self.kind,
                          reason="another run holds the job's lease")  # fmt: skip
                return self
        try:
            if self._client is not None:
                self._requests_before = self._client.requests_sent
                self._throttles_before = self._client.governor.throttles
            if self._dead_letters:
                # A chunk's dead letters sit beside its parent run's: "<run>-<chunk>.jsonl".
                self._dead = self._storage.dead_letters(self.job, self.run_id.replace("#", "-"))
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        try:
            return self._finish(exc)
        finally:
            self._span.__exit__(kind, exc, traceback)

    def _finish(self, exc: BaseException | None) -> Literal[False]:
        if self.skipped:
            return False
        report = self.report
        if exc is not None:
            report.status = "failed"
            report.error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        elif report.status == "running":
            report.status = "fanned_out" if report.chunks else "succeeded"
        try:
            if self._dead is not None:
                self._dead.close()
                report.dead_lettered = self._dead.count
                report.dead_letter_blob = self._dead.name if self._dead.count else None
        finally:
            self._release()
            report.duration_s = round(time.monotonic() - self._started, 3)
            report.records_per_s = round(report.written / report.duration_s, 1) if report.duration_s else 0.0
            if self._client is not None:
                report.requests = self._client.requests_sent - self._requests_before
                report.throttles = self._client.governor.throttles - self._throttles_before
            record_run(report)
            self._save()
            self._span_attributes(report)
        return False

    def _span_attributes(self, report: RunReport) -> None:
        self._traced.set_attribute("dvbridge.run.status", report.status)
        for name in ("rows_read", "written", "dead_lettered", "failed", "requests", "throttles"):
            self._traced.set_attribute(f"dvbridge.run.{name}", int(getattr(report, name)))

    def _release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _save(self) -> None:
        fields = self.report.to_dict()
        if self._chunk_of is not None:
            self._storage.save_chunk_report(self.job, self._chunk_of, self.run_id.rsplit("#", 1)[-1], fields)
        else:
            self._storage.save_report(self.job, self.run_id, fields)
        log_event(logger, f"sync_{self.kind}_report" if self.kind in ("replay", "chunk") else "sync_run_report",
                  **{k: v for k, v in fields.items() if v is not None})  # fmt: skip
