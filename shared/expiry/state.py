"""Per-credential alert state in Table Storage (table ``credentialstate``), with optimistic concurrency:
a sweep and an Event Grid invocation racing for the same threshold cannot both claim it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import DvbridgeError
from shared.expiry.model import Credential
from shared.expiry.policy import CredentialState

if TYPE_CHECKING:  # the SDK loads lazily: indexing must stay light
    from azure.core import MatchConditions
    from azure.data.tables import TableClient, TableEntity, UpdateMode

STATE_TABLE = "credentialstate"
PARTITION = "credential"
_TIMES = ("first_seen", "expires_on", "last_notified", "acknowledged_until", "snoozed_until")


class StateConflict(DvbridgeError):
    """Another invocation changed the row since it was read."""


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class EntityTable(Protocol):
    """The part of ``azure.data.tables.TableClient`` a one-row-per-key store uses (a unit test passes an
    in-memory table): the alert state here, the rotation state in rotation_state."""

    def get_entity(self, partition_key: str, row_key: str) -> TableEntity: ...

    def create_entity(self, entity: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def update_entity(
        self,
        entity: Mapping[str, Any],
        mode: UpdateMode = ...,
        *,
        etag: str | None = ...,
        match_condition: MatchConditions | None = ...,
    ) -> Mapping[str, Any]: ...


class StateTable(EntityTable, Protocol):
    def query_entities(self, query_filter: str) -> Iterable[TableEntity]: ...


if TYPE_CHECKING:

    def _sdk_client_is_a_state_table(client: TableClient) -> StateTable:
        return client  # mypy proves the real client still fits the Protocol


class StateStore:
    def __init__(self, table_client: StateTable) -> None:
        self._table = table_client

    def get(self, credential_id: str) -> CredentialState | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, credential_id)
        except ResourceNotFoundError:
            return None
        return self._state(entity)

    def all(self) -> list[tuple[CredentialState, dict[str, Any]]]:
        """Every row: the state and the credential facts saved with it (for ``GET /api/credentials``)."""
        return [(self._state(e), dict(e)) for e in self._table.query_entities(f"PartitionKey eq '{PARTITION}'")]

    @staticmethod
    def _state(entity: Any) -> CredentialState:
        values: dict[str, Any] = {}
        for f in fields(CredentialState):
            raw = entity.get(f.name)
            if f.name in _TIMES:
                values[f.name] = _time(raw)
            elif f.name == "undelivered":
                values[f.name] = json.loads(raw) if raw else []
            elif f.name != "etag":
                values[f.name] = raw or None
        values["id"] = entity["RowKey"]
        state = CredentialState(**values)
        state.etag = entity.metadata.get("etag")
        return state

    def save(self, state: CredentialState, credential: Credential | None = None) -> CredentialState:
        """Write ``state`` if nobody changed the row since it was read (else :class:`StateConflict`)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": state.id}
        for f in fields(CredentialState):
            value = getattr(state, f.name)
            if f.name in ("id", "etag"):
                continue
            if f.name in _TIMES:
                entity[f.name] = value.isoformat() if value else ""
            elif f.name == "undelivered":
                entity[f.name] = json.dumps(value)
            else:
                entity[f.name] = value or ""
        if credential is not None:
            entity |= {"name": credential.name, "source": credential.source, "owner": credential.owner,
                       "key_id": credential.key_id or ""}  # fmt: skip
        try:
            if state.etag is None:
                metadata = self._table.create_entity(entity)
            else:
                # Without the credential (acknowledge, snooze) a merge keeps its name, source and owner, which
                # the credentials API shows and the sweep needs to notice the credential's removal.
                mode = UpdateMode.REPLACE if credential is not None else UpdateMode.MERGE
                metadata = self._table.update_entity(
                    entity, mode=mode, etag=state.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise StateConflict(state.id) from exc
        state.etag = metadata.get("etag")
        return state
