"""Dataverse's ``RemoteExecutionContext`` (reference dataverse-web-api.md §8.3) as a typed event.

Values arrive WCF-serialised: ``{"__type": "EntityReference:…", "Id": …}``, ``OptionSetValue``, ``Money``,
``"/Date(ms±hhmm)/"``. They become plain values: references as ``{"id", "logical_name", "name"}``, choices
and money as numbers, dates as ISO-8601 UTC. Anything malformed raises :class:`WebhookRejected` (400)
with the reason, never another exception.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import WebhookRejected

MAX_BODY_BYTES = 1024 * 1024  # Dataverse strips contexts above 256 KB; anything near 1 MB is not from it
_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
REQUIRED = ("MessageName", "PrimaryEntityName", "PrimaryEntityId")


@dataclass(frozen=True)
class DataverseEvent:
    message: str
    table: str
    record_id: str
    attributes: dict[str, Any] = field(default_factory=dict)  # the Target's columns (empty when stripped)
    pre_image: dict[str, Any] = field(default_factory=dict)
    post_image: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    request_id: str | None = None
    operation_id: str | None = None
    user_id: str | None = None
    initiating_user_id: str | None = None
    depth: int = 1
    stage: int | None = None
    mode: int | None = None
    organization_id: str | None = None
    organization_name: str | None = None
    size_exceeded: bool = False  # the context was stripped: fetch the record instead

    @property
    def dedupe_key(self) -> str:
        """What identifies a delivery: Dataverse's retry repeats the request and operation ids."""
        return f"{self.request_id or '-'}|{self.operation_id or '-'}|{self.message}|{self.record_id}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def convert_value(value: Any) -> Any:
    """One WCF-serialised value -> a plain one."""
    if isinstance(value, str):
        match = _DATE.match(value)
        if match:
            moment = datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return value
    if isinstance(value, dict):
        kind = str(value.get("__type", "")).split(":", 1)[0]
        if kind == "EntityReference" or ("LogicalName" in value and "Id" in value and "Attributes" not in value):
            return {
                "id": _guid(value.get("Id"), "EntityReference.Id"),
                "logical_name": value.get("LogicalName"),
                "name": value.get("Name"),
            }
        if kind in ("OptionSetValue", "Money"):
            return value.get("Value")
        if kind == "Entity" or "Attributes" in value:
            return entity_attributes(value)
        return {k: convert_value(v) for k, v in value.items() if k != "__type"}
    if isinstance(value, list):
        return [convert_value(v) for v in value]
    return value


def entity_attributes(entity: Any) -> dict[str, Any]:
    if not isinstance(entity, dict):
        raise WebhookRejected(400, "an Entity must be a JSON object")
    pairs = entity.get("Attributes") or []
    if not isinstance(pairs, list):
        raise WebhookRejected(400, "Entity.Attributes must be a list of key/value pairs")
    return {str(p["key"]): convert_value(p.get("value")) for p in pairs if isinstance(p, dict) and "key" in p}


def _pairs(value: Any, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise WebhookRejected(400, f"{name} must be a list of key/value pairs")
    return value


def _guid(value: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise WebhookRejected(400, f"{name} is not a GUID: {str(value)[:60]!r}") from None


def _optional_guid(value: Any, name: str) -> str | None:
    return None if value in (None, "") else _guid(value, name)


def _int(value: Any, name: str, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookRejected(400, f"{name} must be a whole number")
    return value


def parse_remote_execution_context(body: bytes, headers: dict[str, str] | None = None) -> DataverseEvent:
    """Validate and convert; raise WebhookRejected(413/400) with the reason."""
    try:
        return _parse(body, headers)
    except RecursionError:
        raise WebhookRejected(400, "the body is nested too deeply") from None


def _parse(body: bytes, headers: dict[str, str] | None) -> DataverseEvent:
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"the body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
    try:
        context = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"the body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(context, dict):
        raise WebhookRejected(400, "the body must be a JSON object (a RemoteExecutionContext)")
    missing = [name for name in REQUIRED if not context.get(name)]
    if missing:
        raise WebhookRejected(400, f"missing required field(s): {', '.join(missing)}")
    for name in ("MessageName", "PrimaryEntityName"):
        if not isinstance(context[name], str):
            raise WebhookRejected(400, f"{name} must be a string")
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    stripped = "x-ms-dynamics-msg-size-exceeded" in lowered
    attributes: dict[str, Any] = {}
    for pair in _pairs(context.get("InputParameters"), "InputParameters"):
        if pair.get("key") == "Target":
            target = pair.get("value")
            if isinstance(target, dict) and (
                "Attributes" in target or str(target.get("__type", "")).startswith("Entity:")
            ):
                attributes = entity_attributes(target)
    return DataverseEvent(
        message=context["MessageName"],
        table=context["PrimaryEntityName"],
        record_id=_guid(context["PrimaryEntityId"], "PrimaryEntityId"),
        attributes=attributes,
        pre_image=_first_image(context.get("PreEntityImages"), "PreEntityImages"),
        post_image=_first_image(context.get("PostEntityImages"), "PostEntityImages"),
        correlation_id=_optional_guid(context.get("CorrelationId"), "CorrelationId"),
        request_id=_optional_guid(context.get("RequestId"), "RequestId"),
        operation_id=_optional_guid(context.get("OperationId"), "OperationId"),
        user_id=_optional_guid(context.get("UserId"), "UserId"),
        initiating_user_id=_optional_guid(context.get("InitiatingUserId"), "InitiatingUserId"),
        depth=_int(context.get("Depth"), "Depth", 1) or 1,
        stage=_int(context.get("Stage"), "Stage", None),
        mode=_int(context.get("Mode"), "Mode", None),
        organization_id=_optional_guid(context.get("OrganizationId"), "OrganizationId"),
        organization_name=str(context["OrganizationName"]) if context.get("OrganizationName") is not None else None,
        size_exceeded=stripped,
    )


def _first_image(value: Any, name: str) -> dict[str, Any]:
    for pair in _pairs(value, name):
        return entity_attributes(pair.get("value"))
    return {}
