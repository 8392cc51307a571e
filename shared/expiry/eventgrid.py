"""Key Vault's expiry events from Event Grid, parsed leniently.

Microsoft's own sample event has a key with a trailing space (``"ObjectName "``), a value with a leading
space, and the epoch fields quoted as strings although the schema says numbers; the JavaScript SDK uses
camelCase. So keys match case-insensitively after stripping, values are stripped, and an epoch may be an
int, a float or a numeric string. Both the Event Grid and the CloudEvents envelope are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import DvbridgeError

EXPIRY_EVENT_TYPES = {
    "microsoft.keyvault.secretnearexpiry": ("secret", "near"),
    "microsoft.keyvault.secretexpired": ("secret", "expired"),
    "microsoft.keyvault.certificatenearexpiry": ("certificate", "near"),
    "microsoft.keyvault.certificateexpired": ("certificate", "expired"),
    # Key Vault renewed a certificate (its lifetime action): the rotation uploads the new one to Entra.
    "microsoft.keyvault.certificatenewversioncreated": ("certificate", "new"),
}


class EventRejected(DvbridgeError):
    """An Event Grid event we do not act on, with the reason (logged; never retried)."""


@dataclass(frozen=True)
class VaultExpiryEvent:
    event_id: str
    event_type: str
    kind: str  # "secret" or "certificate"
    stage: str  # "near", "expired", or "new" (a certificate's new version)
    topic: str
    vault_name: str
    object_name: str
    version: str
    expires_on: datetime | None


def _lenient(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {str(k).strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in mapping.items()}


def _epoch(value: Any, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond a float's range
        raise EventRejected(f"data.{field} is not a Unix time: {str(value)[:40]!r}") from None
    if not -1e11 < seconds < 1e11:
        raise EventRejected(f"data.{field} is out of range: {seconds!r}")
    return datetime.fromtimestamp(seconds, UTC)


def parse_vault_event(event: Any, allowed_topics: tuple[str, ...]) -> VaultExpiryEvent:
    """One event (Event Grid or CloudEvents schema) → a typed expiry event, or :class:`EventRejected`."""
    top = _lenient(event)
    if not top:
        raise EventRejected("the event is not a JSON object")
    event_type = str(top.get("eventtype") or top.get("type") or "")
    kind_stage = EXPIRY_EVENT_TYPES.get(event_type.lower())
    if kind_stage is None:
        raise EventRejected(f"event type {event_type[:80]!r} is not a Key Vault expiry event")
    topic = str(top.get("topic") or top.get("source") or "")
    if not any(topic.lower() == t.lower() or topic.lower().endswith(t.lower()) for t in allowed_topics if t):
        raise EventRejected(f"topic {topic[:200]!r} is not in EXPIRY_EVENT_TOPICS")
    data = _lenient(top.get("data"))
    name = str(data.get("objectname") or top.get("subject") or "").strip()
    if not name:
        raise EventRejected("data.ObjectName (and subject) is missing")
    vault = str(data.get("vaultname") or topic.rstrip("/").rsplit("/", 1)[-1]).strip()
    return VaultExpiryEvent(
        event_id=str(top.get("id") or ""),
        event_type=event_type,
        kind=kind_stage[0],
        stage=kind_stage[1],
        topic=topic,
        vault_name=vault.lower(),
        object_name=name,
        version=str(data.get("version") or ""),
        expires_on=_epoch(data.get("exp"), "EXP"),
    )
