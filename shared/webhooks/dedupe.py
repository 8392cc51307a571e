"""Seen-before marks for webhook deliveries, nonces and processed events, in Table Storage with a TTL.

Marks are written *after* the work they stand for (the enqueue, the effect), never before: a crash in
between can repeat the work, which idempotent handlers absorb, but can never lose an event.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

DEDUPE_TABLE = "webhookdedupe"
DEDUPE_TTL_S = int(os.environ.get("WEBHOOK_DEDUPE_TTL_S", str(24 * 3600)))  # Dataverse retries within minutes


def processed_scope(source: str) -> str:
    """The scope of "this event's effects are done" marks, written by the processor."""
    return f"processed-{source}"


def _row_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]  # fixed length, no characters Table keys forbid


class Dedupe:
    def __init__(self, table_client: Any) -> None:
        self._table = table_client

    def seen(self, scope: str, key: str, *, now: float | None = None) -> bool:
        """True when ``key`` was marked in ``scope`` and the mark has not expired."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(scope, _row_key(key))
        except ResourceNotFoundError:
            return False
        return float(entity.get("Expires", 0)) > (time.time() if now is None else now)

    def mark(self, scope: str, key: str, *, now: float | None = None) -> None:
        current = time.time() if now is None else now
        self._table.upsert_entity({"PartitionKey": scope, "RowKey": _row_key(key), "Expires": current + DEDUPE_TTL_S})
