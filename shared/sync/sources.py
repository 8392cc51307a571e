"""What a sync run reads: source files in Blob Storage (CSV or JSON Lines, one at a time, oldest first), a
paged HTTP JSON API from its last watermark, or Dataverse change tracking from its last delta link.

Each source moves its checkpoint (processed file, watermark, delta link) only when told that what it
yielded was handled, so a run that fails part-way starts again from the last confirmed point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shared.sync.jobs import CsvSource, HttpSource, JsonlSource
from shared.sync.rows import SourceRow, count_lines, csv_rows, jsonl_rows

if TYPE_CHECKING:
    import requests

WATERMARK_STATE = "watermark"
DELTA_LINK_STATE = "deltalink"


class SourceStorage(Protocol):
    def list_source_blobs(self, container: str, prefix: str) -> list[tuple[str, str]]: ...

    def blob_chunks(self, container: str, blob: str) -> Iterator[bytes]: ...

    def processed(self, job: str) -> dict[str, str]: ...

    def mark_processed(self, job: str, blob: str, etag: str) -> None: ...

    def get_state(self, job: str, name: str) -> str | None: ...

    def set_state(self, job: str, name: str, value: str) -> None: ...


@dataclass
class BlobFiles:
    """The job's source files not processed yet (same name and ETag means processed), oldest first."""

    job: str
    spec: CsvSource | JsonlSource
    storage: SourceStorage
    skipped: int = 0  # files found processed already, counted by pending()

    def pending(self) -> Iterator[tuple[str, str]]:
        """(blob, etag) of each file to read, in arrival order."""
        done = self.storage.processed(self.job)
        self.skipped = 0
        for blob, etag in self.storage.list_source_blobs(self.spec.container, self.spec.prefix):
            if done.get(blob) == etag:
                self.skipped += 1
                continue
            yield blob, etag

    def rows(self, blob: str, etag: str) -> Iterator[SourceRow]:
        spec = self.spec
        chunks = self.storage.blob_chunks(spec.container, blob)
        if isinstance(spec, CsvSource):
            return csv_rows(chunks, blob, etag, encoding=spec.encoding, delimiter=spec.delimiter, headers=spec.headers)
        return jsonl_rows(chunks, blob, etag, encoding=spec.encoding)

    def line_count(self, blob: str) -> int:
        return count_lines(self.storage.blob_chunks(self.spec.container, blob))

    def done(self, blob: str, etag: str) -> None:
        self.storage.mark_processed(self.job, blob, etag)


@dataclass
class ApiPages:
    """A paged JSON API read from the last watermark; ``done()`` advances it to the highest value seen."""

    job: str
    spec: HttpSource
    storage: SourceStorage
    watermark_field: str | None
    secret: Callable[[str], str] | None = None
    session: requests.Session | None = None
    _previous: str | None = None
    _highest: list[str] = field(default_factory=list)

    def rows(self) -> Iterator[SourceRow]:
        from shared.sync.http_source import iter_http

        self._previous = self.storage.get_state(self.job, WATERMARK_STATE)
        self._highest = [self._previous] if self._previous else []
        for row in iter_http(self.spec, secret=self.secret, watermark=self._previous, session=self.session):
            value = row.values.get(self.watermark_field) if self.watermark_field else None
            if value is not None:
                self._highest.append(str(value))
            yield row

    def done(self) -> None:
        if self.watermark_field and self._highest:
            # ISO dates and numbers written as padded text sort as text.
            self.storage.set_state(self.job, WATERMARK_STATE, max(self._highest))


class ChangeReader(Protocol):
    def track_changes(self, entity_set: str, *, select: Any = (), delta_link: str | None = None) -> Any: ...


@dataclass
class ChangeTracking:
    """Dataverse change tracking from the job's last delta link; ``done()`` saves the next one."""

    job: str
    entity_set: str
    select: tuple[str, ...]
    client: ChangeReader
    storage: SourceStorage
    previous: str | None = None
    _next: str | None = None

    def changes(self) -> list[dict[str, Any]]:
        self.previous = self.storage.get_state(self.job, DELTA_LINK_STATE)
        page = self.client.track_changes(self.entity_set, select=self.select, delta_link=self.previous)
        self._next = page.delta_link
        changes = [{"op": "upsert", "record": _clean(row)} for row in page.changed]
        return changes + [{"op": "delete", "id": record_id} for record_id in page.deleted]

    def done(self) -> None:
        if self._next is not None:
            self.storage.set_state(self.job, DELTA_LINK_STATE, self._next)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("@odata.")}
