"""The shared Dataverse budget's row and marker in Table storage (see ``shared.dataverse.budget``).

One partition per application user (the Dataverse environment and the app registration), so every app
and instance that writes as that user through this storage account shares one budget. Two rows: the
shares, replaced whole under its ETag (a writer that lost the race re-reads), and the pause marker, which
only ever moves later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from shared.dataverse.budget import Share

BUDGET_TABLE = "dvbridgebudget"
SHARES_ROW = "shares"
PAUSE_ROW = "pause"
PAUSE_ATTEMPTS = 5  # another instance moving the marker at the same moment: re-read this many times


def budget_partition(dataverse_url: str, client_id: str) -> str:
    """The application user's partition: a hash, so no URL character reaches a key Table storage forbids."""
    identity = f"{dataverse_url.rstrip('/').lower()}|{client_id.lower()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class TableBudgetStore:
    """:class:`shared.dataverse.budget.BudgetStore` on an ``azure.data.tables.TableClient``, which
    ``table()`` gives on first use (so building the Dataverse client costs no storage call)."""

    def __init__(self, table: Callable[[], Any], partition: str) -> None:
        self._table_factory = table
        self._table_client: Any = None
        self._partition = partition

    @property
    def _table(self) -> Any:
        if self._table_client is None:
            self._table_client = self._table_factory()
        return self._table_client

    def __repr__(self) -> str:
        return f"TableBudgetStore(partition={self._partition!r})"

    def read_shares(self) -> tuple[dict[str, Share], str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(self._partition, SHARES_ROW)
        except ResourceNotFoundError:
            return {}, None
        stored = json.loads(str(entity.get("Shares") or "{}"))
        shares = {
            str(key): Share(int(value[0]), int(value[1]), float(value[2]))
            for key, value in stored.items()
            if isinstance(value, list) and len(value) == 3  # claim, want, expires
        }
        return shares, str(entity.metadata["etag"])

    def write_shares(self, shares: Mapping[str, Share], etag: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": self._partition,
            "RowKey": SHARES_ROW,
            "Shares": json.dumps({k: [s.claim, s.want, round(s.expires, 3)] for k, s in sorted(shares.items())}),
        }
        try:
            if etag is None:
                self._table.create_entity(entity)
            else:
                self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def read_pause(self) -> float:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(self._partition, PAUSE_ROW)
        except ResourceNotFoundError:
            return 0.0
        return float(entity.get("PausedUntil") or 0.0)

    def raise_pause(self, until: float) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": self._partition, "RowKey": PAUSE_ROW, "PausedUntil": float(until)}
        for _ in range(PAUSE_ATTEMPTS):
            try:
                current = self._table.get_entity(self._partition, PAUSE_ROW)
            except ResourceNotFoundError:
                try:
                    self._table.create_entity(entity)
                    return
                except ResourceExistsError:
                    continue
            if float(current.get("PausedUntil") or 0.0) >= until:
                return
            try:
                self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
