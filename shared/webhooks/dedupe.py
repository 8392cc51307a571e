"""Seen-before checks for webhook deliveries and nonces, in Table Storage with a TTL."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from typing import Any

DEDUPE_TABLE = "webhookdedupe"
DEDUPE_TTL_S = int(os.environ.get("WEBHOOK_DEDUPE_TTL_S", str(24 * 3600)))  # Dataverse retries within minutes


class Dedupe:
    def __init__(self, table_service: Any) -> None:
        table_service.create_table_if_not_exists(DEDUPE_TABLE)
        self._table = table_service.get_table_client(DEDUPE_TABLE)

    def first_time(self, scope: str, key: str, *, now: float | None = None) -> bool:
        """True the first time ``key`` is seen in ``scope`` within the TTL (atomic: create-if-absent)."""
        from azure.core.exceptions import ResourceExistsError

        current = time.time() if now is None else now
        entity = {
            "PartitionKey": scope,
            "RowKey": hashlib.sha256(key.encode()).hexdigest()[:40],
            "Expires": current + DEDUPE_TTL_S,
        }
        try:
            self._table.create_entity(entity)
            return True
        except ResourceExistsError:
            existing = self._table.get_entity(entity["PartitionKey"], entity["RowKey"])
            if float(existing.get("Expires", 0)) > current:
                return False
            self._table.update_entity(entity)  # an expired mark: this is a new delivery
            return True

    def forget(self, scope: str, key: str) -> None:
        """Undo a mark (the enqueue after it failed), so the sender's retry is processed."""
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(scope, hashlib.sha256(key.encode()).hexdigest()[:40])
