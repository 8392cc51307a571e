"""The emulator's SQLite store: one row per record, its columns as JSON, a global version counter.

Every request runs inside :meth:`Store.transaction`; a failure rolls the whole request back.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    data TEXT NOT NULL, createdon TEXT NOT NULL, modifiedon TEXT NOT NULL,
    PRIMARY KEY (entity, id)
);
CREATE TABLE IF NOT EXISTS deletions (entity TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('version', 1000000);
"""


@dataclass(frozen=True)
class Record:
    entity: str
    id: str
    version: int
    data: dict[str, Any]
    createdon: str
    modifiedon: str

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class ChangeEvent:
    message: str  # Create, Update, Delete
    record: Record  # after the change (for Delete: the deleted record)
    before: Record | None
    changes: dict[str, Any]


def _check_identifier(name: str) -> None:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a column name: {name!r}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """SQLite-backed records; ``path=None`` keeps everything in memory (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self._conn = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL" if path else "PRAGMA journal_mode=MEMORY")
        self._conn.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0
        # Change events (for outgoing webhooks) are released only when the outermost transaction
        # commits; a rolled-back savepoint drops its own events.
        self._events: list[ChangeEvent] = []
        self._committed: list[ChangeEvent] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """All-or-nothing; nested calls join the outer transaction (savepoints for change sets)."""
        with self._lock:
            savepoint = f"sp{self._depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            mark = len(self._events)
            try:
                yield self
            except BaseException:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
                del self._events[mark:]
                raise
            else:
                self._conn.execute(f"RELEASE {savepoint}")
                if self._depth == 1:
                    self._committed.extend(self._events)
                    self._events.clear()
            finally:
                self._depth -= 1

    def drain_events(self) -> list[ChangeEvent]:
        """Committed change events not yet handed out."""
        with self._lock:
            events, self._committed = self._committed, []
        return events

    def _next_version(self) -> int:
        self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'version'")
        row = self._conn.execute("SELECT value FROM counters WHERE name = 'version'").fetchone()
        return int(row[0])

    def current_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT value FROM counters WHERE name = 'version'").fetchone()[0])

    @staticmethod
    def _record(row: tuple[Any, ...]) -> Record:
        return Record(row[0], row[1], int(row[2]), json.loads(row[3]), row[4], row[5])

    def get(self, entity: str, record_id: str) -> Record | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT entity, id, version, data, createdon, modifiedon FROM records WHERE entity=? AND id=?",
                (entity, record_id.lower()),
            ).fetchone()
        return self._record(row) if row else None

    def index_key(self, entity: str, attributes: tuple[str, ...]) -> None:
        """An expression index per alternate key: upserts by key stay O(log n) as the table grows."""
        for name in attributes:
            _check_identifier(name)
        _check_identifier(entity)
        columns = ", ".join(f"json_extract(data, '$.\"{a}\"')" for a in attributes)
        with self._lock:
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS ix_{entity}_{'_'.join(attributes)} ON records(entity, {columns})"
            )

    def find_by_key(self, entity: str, values: dict[str, Any]) -> Record | None:
        # Literal paths (validated identifiers) so SQLite can use the expression indexes.
        for name in values:
            _check_identifier(name)
        clauses = " AND ".join(
            f"json_extract(data, '$.\"{name}\"') IS NULL"
            if value is None
            else f"json_extract(data, '$.\"{name}\"') = ?"
            for name, value in values.items()
        )
        params: list[Any] = [entity, *(v for v in values.values() if v is not None)]
        with self._lock:
            row = self._conn.execute(
                f"SELECT entity, id, version, data, createdon, modifiedon FROM records WHERE entity=? AND {clauses}",  # noqa: S608 - placeholders only
                params,
            ).fetchone()
        return self._record(row) if row else None

    def insert(self, entity: str, record_id: str, data: dict[str, Any]) -> Record:
        with self._lock:
            now, version = _now(), self._next_version()
            self._conn.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                (entity, record_id.lower(), version, json.dumps(data), now, now),
            )
        record = Record(entity, record_id.lower(), version, data, now, now)
        self._events.append(ChangeEvent("Create", record, None, data))
        return record

    def update(self, record: Record, changes: dict[str, Any]) -> Record:
        with self._lock:
            data = {**record.data, **changes}
            now, version = _now(), self._next_version()
            self._conn.execute(
                "UPDATE records SET version=?, data=?, modifiedon=? WHERE entity=? AND id=?",
                (version, json.dumps(data), now, record.entity, record.id),
            )
        updated = Record(record.entity, record.id, version, data, record.createdon, now)
        self._events.append(ChangeEvent("Update", updated, record, changes))
        return updated

    def delete(self, record: Record) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM records WHERE entity=? AND id=?", (record.entity, record.id))
            self._conn.execute(
                "INSERT INTO deletions VALUES (?, ?, ?)", (record.entity, record.id, self._next_version())
            )
        self._events.append(ChangeEvent("Delete", record, record, {}))  # what a Delete step is sent

    def all(self, entity: str) -> list[Record]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT entity, id, version, data, createdon, modifiedon FROM records WHERE entity=? ORDER BY id",
                (entity,),
            ).fetchall()
        return [self._record(r) for r in rows]

    def count(self, entity: str) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM records WHERE entity=?", (entity,)).fetchone()[0])

    def changed_since(self, entity: str, version: int) -> list[Record]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT entity, id, version, data, createdon, modifiedon FROM records"
                " WHERE entity=? AND version>? ORDER BY version",
                (entity, version),
            ).fetchall()
        return [self._record(r) for r in rows]

    def deleted_since(self, entity: str, version: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM deletions WHERE entity=? AND version>? ORDER BY version", (entity, version)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def counts_by_table(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT entity, COUNT(*) FROM records GROUP BY entity").fetchall()
        return {str(entity): int(n) for entity, n in rows}
