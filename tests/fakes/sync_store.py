"""In-memory stand-ins for what sync runs use: storage (``shared.sync.engine.SyncStore``), the Dataverse
client's counters and change tracking, table metadata and the write planner."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.dataverse.schema import Column, TableSchema
from shared.dataverse.wire import DeltaPage

CHUNK_BYTES = 7  # small, so that every reader meets lines split across chunks


class FakeLease:
    def __init__(self, store: FakeSyncStore, job: str) -> None:
        self._store, self._job = store, job

    def release(self) -> None:
        self._store.leases.discard(self._job)


class FakeDeadLetters:
    def __init__(self, store: FakeSyncStore, name: str) -> None:
        self._store, self.name, self.count = store, name, 0
        self.closed = False

    def add(self, record: dict[str, Any], *, code: str, reason: str, field: str | None = None,
            source: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._store.dead.setdefault(self.name, []).append(
            {"record": record, "code": code, "reason": reason, "field": field, "source": source}
        )
        self.count += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeSyncStore:
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    etags: dict[tuple[str, str], str] = field(default_factory=dict)
    leases: set[str] = field(default_factory=set)
    reports: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    chunk_reports_saved: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    processed_files: dict[str, dict[str, str]] = field(default_factory=dict)
    state: dict[tuple[str, str], str] = field(default_factory=dict)
    dead: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    queued: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_reports: bool = False

    # -- seeding ---------------------------------------------------------------------------------------
    def upload(self, container: str, name: str, text: str) -> None:
        self.blobs[(container, name)] = text.encode("utf-8")
        self.etags[(container, name)] = f'"0x{len(self.etags) + 1:X}"'

    # -- run storage -----------------------------------------------------------------------------------
    def lease(self, job: str) -> FakeLease | None:
        if job in self.leases:
            return None
        self.leases.add(job)
        return FakeLease(self, job)

    def dead_letters(self, job: str, run_id: str) -> FakeDeadLetters:
        return FakeDeadLetters(self, f"{job}/{run_id}.jsonl")

    def save_report(self, job: str, run_id: str, report: dict[str, Any]) -> None:
        if self.fail_reports:
            raise ConnectionError("storage down (a test's fake)")
        self.reports[(job, run_id)] = json.loads(json.dumps(report))

    def save_chunk_report(self, job: str, run_id: str, chunk_id: str, report: dict[str, Any]) -> None:
        self.chunk_reports_saved[(job, run_id, chunk_id)] = json.loads(json.dumps(report))

    def chunk_reports(self, job: str, run_id: str) -> list[dict[str, Any]]:
        return [r for (j, run, _), r in sorted(self.chunk_reports_saved.items()) if (j, run) == (job, run_id)]

    def get_report(self, job: str, run_id: str) -> dict[str, Any] | None:
        found = self.reports.get((job, run_id))
        return dict(found) if found is not None else None

    # -- sources and checkpoints -----------------------------------------------------------------------
    def list_source_blobs(self, container: str, prefix: str) -> list[tuple[str, str]]:
        return [(n, self.etags[(c, n)]) for (c, n) in self.blobs if c == container and n.startswith(prefix)]

    def blob_chunks(self, container: str, blob: str) -> Iterator[bytes]:
        data = self.blobs[(container, blob)]
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]

    def processed(self, job: str) -> dict[str, str]:
        return dict(self.processed_files.get(job, {}))

    def mark_processed(self, job: str, blob: str, etag: str) -> None:
        self.processed_files.setdefault(job, {})[blob] = etag

    def get_state(self, job: str, name: str) -> str | None:
        return self.state.get((job, name))

    def set_state(self, job: str, name: str, value: str) -> None:
        self.state[(job, name)] = value

    def get_blob(self, container: str, name: str) -> bytes | None:
        return self.blobs.get((container, name))

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        self.blobs[(container, name)] = data

    def enqueue(self, queue: str, message: dict[str, Any]) -> None:
        self.queued.append((queue, json.loads(json.dumps(message))))

    def read_dead_letters(self, job: str, run_id: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        prefix = f"{job}/{run_id}.jsonl" if run_id else f"{job}/"
        for name, letters in list(self.dead.items()):
            if name.startswith(prefix):
                for letter in letters:
                    yield name, letter

    def remove_dead_letters(self, blobs: list[str]) -> None:
        for blob in blobs:
            self.dead.pop(blob, None)


@dataclass
class FakeGovernor:
    throttles: int = 0


@dataclass
class FakeDataverse:
    """The client as runs see it: request and throttle counts, and change tracking."""

    requests_sent: int = 0
    governor: FakeGovernor = field(default_factory=FakeGovernor)
    changed: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    delta_links: int = 0

    def track_changes(self, entity_set: str, *, select: Any = (), delta_link: str | None = None) -> DeltaPage:
        self.requests_sent += 1
        self.delta_links += 1
        page = DeltaPage(
            list(self.changed), list(self.deleted), f"https://org.example/{entity_set}?token={self.delta_links}"
        )
        self.changed, self.deleted = [], []
        return page


@dataclass(frozen=True)
class Outcome:
    index: int
    status: str
    code: str | None = None
    message: str | None = None


Verdict = Callable[[Mapping[str, Any]], Outcome | str | BaseException]


class FakePlanner:
    """The write planner: every record is "created" unless ``verdict`` says otherwise (a status, an
    outcome, or an exception to raise there). Counts one request and, with ``throttle_every``, a throttle
    per that many records on the client it was given."""

    def __init__(self, client: FakeDataverse, verdict: Verdict | None = None, *, throttle_every: int = 0) -> None:
        self.client = client
        self.verdict = verdict
        self.throttle_every = throttle_every
        self.written: list[dict[str, Any]] = []

    def write(self, table: str, entity_set: str, records: Iterable[Mapping[str, Any]], operation: str = "upsert", *,
              key: Sequence[str] = (), strategy: str = "auto", batch_size: int | None = None,
              max_concurrency: int | None = None) -> Iterator[Outcome]:  # fmt: skip
        for index, record in enumerate(records):
            self.client.requests_sent += 1
            if self.throttle_every and (index + 1) % self.throttle_every == 0:
                self.client.governor.throttles += 1
            said = self.verdict(record) if self.verdict else "created"
            if isinstance(said, BaseException):
                raise said
            outcome = said if isinstance(said, Outcome) else Outcome(index, said)
            if outcome.status != "failed":
                self.written.append(dict(record))
            yield Outcome(index, outcome.status, outcome.code, outcome.message)


ACCOUNT_SCHEMA = TableSchema(
    "account",
    {
        "accountnumber": Column("accountnumber", "String", 20),
        "name": Column("name", "String", 160, required=True),
    },
)


class FakeMetadata:
    def __init__(self, *schemas: TableSchema) -> None:
        self.schemas = {s.logical_name: s for s in schemas or (ACCOUNT_SCHEMA,)}
        self.reads = 0

    def schema(self, table: str) -> TableSchema:
        self.reads += 1
        return self.schemas[table]
