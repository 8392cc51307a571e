"""The state of the app's own credential rotation, one row per credential in Table Storage (table
``credentialrotation``), ETag-guarded: two invocations cannot both move one rotation a step on, and a crashed
invocation's successor resumes from the last step saved."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from shared.expiry.state import EntityTable, StateConflict

ROTATION_TABLE = "credentialrotation"
PARTITION = "rotation"

# planned: the new credential is decided on, not yet in Entra.  added: Entra holds it (a secret's text only in
# the memory of the invocation that added it).  stored: Key Vault's latest version holds it.  verified: a
# fresh token and Dataverse's WhoAmI and privilege probe work with it.  switched: this worker uses it, the
# others within their cache TTL; the grace period runs.  retired: the old credential is gone (done).
# failed: undone, the old credential kept; the next attempt waits ROTATION_RETRY_AFTER_S.
Phase = Literal["planned", "added", "stored", "verified", "switched", "retired", "failed"]
IN_FLIGHT: frozenset[str] = frozenset({"planned", "added", "stored", "verified", "switched"})
_TIMES = ("started_at", "updated_at", "added_at", "switched_at", "grace_until", "finished_at", "new_end")


@dataclass
class RotationState:
    credential: str  # the Key Vault object: DATAVERSE_CLIENT_SECRET_NAME or DATAVERSE_CERTIFICATE_NAME
    kind: Literal["secret", "certificate"]
    rotation_id: str
    phase: Phase
    reason: str  # what started it: sweep, event, admin
    started_at: datetime
    updated_at: datetime
    old_key_id: str = ""  # the Entra keyId being replaced
    old_version: str = ""  # the Key Vault version in use when it was planned
    new_key_id: str = ""
    new_version: str = ""  # secret: the version the rotation stored; certificate: the renewed version
    new_end: datetime | None = None  # the new credential's end date in Entra
    added_at: datetime | None = None  # the verify deadline counts from here
    switched_at: datetime | None = None
    grace_until: datetime | None = None
    finished_at: datetime | None = None
    failure: str = ""  # "<code>: <cause>" of a failed rotation
    failed_step: str = ""
    notified: list[str] = field(default_factory=list)  # steps already announced: a resume never repeats one
    etag: str | None = None

    @property
    def in_flight(self) -> bool:
        return self.phase in IN_FLIGHT

    def to_dict(self) -> dict[str, Any]:
        """What the admin route shows (no secret is ever part of the state)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("etag", "notified")}


class RotationStore:
    """One row per credential (RowKey: the Key Vault object name, which Key Vault limits to letters, digits
    and dashes, so it is a safe key as it is)."""

    def __init__(self, table_client: EntityTable) -> None:
        self._table = table_client

    def get(self, credential: str) -> RotationState | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, credential)
        except ResourceNotFoundError:
            return None
        values: dict[str, Any] = {}
        for f in fields(RotationState):
            raw = entity.get(f.name)
            if f.name in _TIMES:
                values[f.name] = datetime.fromisoformat(raw) if raw else None
            elif f.name == "notified":
                values[f.name] = json.loads(raw) if raw else []
            elif f.name not in ("etag", "credential"):
                values[f.name] = raw or ""
        state = RotationState(credential=str(entity["RowKey"]), **values)
        state.etag = entity.metadata.get("etag")
        return state

    def save(self, state: RotationState) -> RotationState:
        """Write ``state`` if nobody changed the row since it was read (else StateConflict); sets its etag."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": state.credential}
        for f in fields(RotationState):
            value = getattr(state, f.name)
            if f.name in ("credential", "etag"):
                continue
            if f.name in _TIMES:
                entity[f.name] = value.isoformat() if value else ""
            elif f.name == "notified":
                entity[f.name] = json.dumps(value)
            else:
                entity[f.name] = value
        try:
            if state.etag is None:
                metadata = self._table.create_entity(entity)
            else:
                metadata = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=state.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise StateConflict(state.credential) from exc
        state.etag = metadata.get("etag")
        return state
