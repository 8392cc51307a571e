"""The change index of an inbound job: the last written column hash per record key, so that a row whose
columns did not change since Dataverse confirmed them is not sent again."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from shared.storage.account import table_key

HASHES_CONTAINER = "sync-hashes"
HASH_FLUSH_EVERY = 20_000  # keys between index writes: a crash re-sends at most this many rows (idempotently)
HASH_HEX_CHARS = 32  # 128 bits of SHA-256: collisions are out of reach for any table


class BlobStore(Protocol):
    def get_blob(self, container: str, name: str) -> bytes | None: ...

    def put_blob(self, container: str, name: str, data: bytes) -> None: ...


class ChangeIndex(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, digest: str) -> None: ...

    def flush(self) -> None: ...


def row_hash(columns: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(columns, sort_keys=True, default=str).encode()).hexdigest()[:HASH_HEX_CHARS]


class HashIndex:
    """One gzipped JSON blob per job, loaded once per run and written after confirmed writes (every
    ``HASH_FLUSH_EVERY`` keys and at the end of each file).

    One blob rather than a Table entity per key: a table write per record held the sync engine far below
    Dataverse's ceiling (BENCHMARKS.md). The job's lease keeps two runs from writing it at once; fan-out
    chunks do not use it."""

    def __init__(self, storage: BlobStore, job: str) -> None:
        self._storage = storage
        self._name = f"{table_key(job)}.json.gz"
        data = storage.get_blob(HASHES_CONTAINER, self._name)
        self._known: dict[str, str] = json.loads(gzip.decompress(data)) if data is not None else {}
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
        self._storage.put_blob(HASHES_CONTAINER, self._name, body)
        self._pending = 0


class NoIndex:
    """Fan-out chunks always write (upserts are idempotent): loading every key's hash per chunk costs more."""

    def get(self, key: str) -> str | None:
        return None

    def set(self, key: str, digest: str) -> None:
        pass

    def flush(self) -> None:
        pass
