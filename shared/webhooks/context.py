"""Dataverse's ``RemoteExecutionContext`` (what a webhook service endpoint receives) as a typed event.

Values arrive WCF-serialised: ``{"__type": "EntityReference:…", "Id": …}``, ``OptionSetValue``, ``Money``,
``"/Date(ms±hhmm)/"``. They become plain values: references as ``{"id", "logical_name", "name"}``, choices
and money as numbers, dates as ISO-8601 UTC. Anything malformed raises :class:`WebhookRejected` (400)
with the reason, naming the field or attribute (``Target.revenue: …``), never another exception: the
receiver answers any other exception with 503, and Dataverse would retry input that can never succeed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import WebhookRejected

MAX_BODY_BYTES = 1024 * 1024  # Dataverse strips contexts above 256 KB; anything near 1 MB is not from it
# Value nesting below an attribute (EntityCollection > Entity > attribute > list ...): Dataverse's own go a
# handful of levels deep; a bound refuses a hostile one with its path instead of a RecursionError.
MAX_VALUE_NESTING = 32
# JSON number literals longer than this are refused before conversion: int() of thousands of digits raises
# (Python's int max-str-digits) and costs quadratic time; no Dataverse number needs more than 20 digits.
MAX_NUMBER_CHARS = 64
MAX_ROW_VERSION_DIGITS = 19  # a RowVersion is a SQL rowversion: a 64-bit number
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # whole number columns, option set values, Depth/Stage/Mode
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the widest Dataverse whole number (BigInt)
MONEY_LIMIT = 922_337_203_685_477  # Dataverse's currency range is ± this
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# /Date(ms)/ counts milliseconds from the epoch; what Python's datetime holds (years 1..9999):
DATE_MS_MIN = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
DATE_MS_MAX = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_DATE = re.compile(r"/Date\((-?[0-9]+)([+-][0-9]{4})?\)/")  # ASCII digits only: \d admits other scripts
_GUID = re.compile(r"\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?")
PREVIEW_CHARS = 60  # how much of a refused value a reason quotes
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
    # The record's RowVersion after this change (the Target's, else the post image's; None for a Delete or
    # a stripped context): what the ordering guard compares.
    row_version: int | None = None
    reconciled: bool = False  # a synthetic event of the reconciler: the row's latest state

    @property
    def dedupe_key(self) -> str:
        """What identifies a delivery: Dataverse's retry repeats the request, operation and correlation ids.
        The correlation id keeps two updates of one record apart when a context carries neither of the
        other two (they would otherwise share a key, and the second be dropped as a duplicate)."""
        ids = (self.request_id, self.operation_id, self.correlation_id)
        return "|".join([*(i or "-" for i in ids), self.message, self.record_id])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _BadNumber:
    """A JSON number that cannot become a Python number safely; refused, with its path, where it is used."""

    text: str
    why: str


def _parse_int(text: str) -> int | _BadNumber:
    if len(text) > MAX_NUMBER_CHARS:
        return _BadNumber(_clip(text), f"has {len(text):,} characters; at most {MAX_NUMBER_CHARS} are accepted")
    return int(text)


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf
        return _BadNumber(_clip(text), "is beyond the range of a 64-bit floating-point number")
    return value


def _clip(text: str) -> str:
    return text[:PREVIEW_CHARS] + "..." if len(text) > PREVIEW_CHARS else text


def _parse_constant(text: str) -> _BadNumber:
    return _BadNumber(text, "is not a JSON number (NaN and Infinity are not JSON)")


def _preview(value: Any) -> str:
    """A refused value as a reason quotes it: short; containers by their kind (they can be huge or deep)."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, _BadNumber):
        return value.text
    text = _clip(value if isinstance(value, str) else json.dumps(value))  # null, true, 12.5 as JSON spells them
    return repr(text) if isinstance(value, str) else text


def _reject(path: str, problem: str) -> WebhookRejected:
    return WebhookRejected(400, f"{path}: {problem}")


def convert_value(value: Any, path: str = "value", nesting: int = 0) -> Any:
    """One WCF-serialised value -> a plain one; ``path`` names it in a refusal (``Target.revenue``)."""
    if nesting > MAX_VALUE_NESTING:
        raise _reject(path, f"nested more than {MAX_VALUE_NESTING} levels deep")
    if isinstance(value, _BadNumber):
        raise _reject(path, f"the number {value.text} {value.why}")
    if isinstance(value, str):
        return _date(value, path) if value.startswith("/Date(") else value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _reject(path, f"the whole number {_preview(value)} is outside Dataverse's 64-bit range")
        return value
    if isinstance(value, float):
        return value  # finite: the parser refused the rest
    if isinstance(value, list):
        return [convert_value(v, f"{path}[{i}]", nesting + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return _convert_object(value, path, nesting)
    raise _reject(path, f"unexpected value of type {type(value).__name__}")  # json.loads makes none other


def _convert_object(value: dict[str, Any], path: str, nesting: int) -> Any:
    kind_text = value.get("__type", "")
    if not isinstance(kind_text, str):
        raise _reject(f"{path}.__type", "must be a string such as 'Money:http://schemas.microsoft.com/...'")
    kind = kind_text.split(":", 1)[0]
    if kind == "EntityReference" or ("LogicalName" in value and "Id" in value and "Attributes" not in value):
        return {
            "id": _guid(value.get("Id"), f"{path}.Id"),
            "logical_name": _optional_text(value.get("LogicalName"), f"{path}.LogicalName"),
            "name": _optional_text(value.get("Name"), f"{path}.Name"),
        }
    if kind == "OptionSetValue":
        return _whole(value.get("Value"), f"{path}.Value", INT32_MIN, INT32_MAX)
    if kind == "Money":
        return _money(value.get("Value"), f"{path}.Value")
    if kind == "Entity" or "Attributes" in value:
        return entity_attributes(value, path, nesting + 1)
    return {k: convert_value(v, f"{path}.{_name(k)}", nesting + 1) for k, v in value.items() if k != "__type"}


def _date(value: str, path: str) -> str:
    """``/Date(ms±hhmm)/``: milliseconds since the epoch in UTC; the offset is the sender's zone, not a shift."""
    match = _DATE.fullmatch(value)
    if match is None:
        return value  # a text column may hold anything; only the WCF date form is converted
    digits = match.group(1)
    # Range first, on the text: thousands of digits must not reach int() (max-str-digits, quadratic time).
    if len(digits.lstrip("-")) > len(str(DATE_MS_MAX)) or not DATE_MS_MIN <= int(digits) <= DATE_MS_MAX:
        raise _reject(path, f"the date {_preview(value)} is out of range (years 0001..9999)")
    moment = _EPOCH + timedelta(milliseconds=int(digits))
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _whole(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, _BadNumber):
        raise _reject(path, f"the number {value.text} {value.why}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _reject(path, f"must be a whole number, got {_preview(value)}")
    if not low <= value <= high:
        raise _reject(path, f"must be between {low:,} and {high:,}, got {_preview(value)}")
    return value


def _money(value: Any, path: str) -> int | float:
    if isinstance(value, _BadNumber):
        raise _reject(path, f"the number {value.text} {value.why}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(path, f"must be a number (an amount), got {_preview(value)}")
    if not -MONEY_LIMIT <= value <= MONEY_LIMIT:
        raise _reject(path, f"the amount {_preview(value)} is outside Dataverse's currency range ±{MONEY_LIMIT:,}")
    return value


def _optional_text(value: Any, path: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _reject(path, f"must be a string or null, got {_preview(value)}")


def _name(key: str) -> str:
    """An attribute name as a refusal quotes it: short, and printable."""
    return key[:PREVIEW_CHARS] if key.isprintable() else repr(key[:PREVIEW_CHARS])


def entity_attributes(entity: Any, path: str = "Entity", nesting: int = 0) -> dict[str, Any]:
    if not isinstance(entity, dict):
        raise _reject(path, f"must be an Entity (a JSON object with Attributes), got {_preview(entity)}")
    pairs = entity.get("Attributes")
    if pairs is None:
        return {}
    if not isinstance(pairs, list):
        raise _reject(f"{path}.Attributes", "must be a list of key/value pairs")
    attributes: dict[str, Any] = {}
    for i, pair in enumerate(pairs):
        key = pair.get("key") if isinstance(pair, dict) else None
        if not isinstance(key, str):
            raise _reject(f"{path}.Attributes[{i}]", 'must be a pair {"key": "<column name>", "value": ...}')
        attributes[key] = convert_value(pair.get("value"), f"{path}.{_name(key)}", nesting + 1)
    return attributes


def _pairs(value: Any, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise WebhookRejected(400, f"{name} must be a list of key/value pairs")
    return value


def _guid(value: Any, name: str) -> str:
    if not isinstance(value, str) or _GUID.fullmatch(value) is None:
        raise WebhookRejected(400, f"{name} is not a GUID: {_preview(value)}")
    return value.strip("{}").lower()


def _optional_guid(value: Any, name: str) -> str | None:
    return None if value is None or value == "" else _guid(value, name)


def _int(value: Any, name: str, default: int | None, low: int = INT32_MIN) -> int | None:
    if value is None:
        return default
    if isinstance(value, _BadNumber):
        raise WebhookRejected(400, f"{name}: the number {value.text} {value.why}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookRejected(400, f"{name} must be a whole number, got {_preview(value)}")
    if not low <= value <= INT32_MAX:
        raise WebhookRejected(400, f"{name} must be between {low:,} and {INT32_MAX:,}, got {_preview(value)}")
    return value


def parse_json_payload(body: bytes) -> dict[str, Any]:
    """A signed webhook's body: a JSON object whose numbers Dataverse can take; raise WebhookRejected(400).

    The same number rules as a context's values (no NaN or Infinity, no overflowing or overlong numbers),
    so bad input is refused at the receiver rather than failing at Dataverse after it was acknowledged."""
    try:
        payload = json.loads(
            body.decode("utf-8-sig"), parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"the body is not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise WebhookRejected(400, "the body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    _check_numbers(payload, "body", 0)
    return payload


def _check_numbers(value: Any, path: str, nesting: int) -> None:
    if nesting > MAX_VALUE_NESTING:
        raise _reject(path, f"nested more than {MAX_VALUE_NESTING} levels deep")
    if isinstance(value, _BadNumber):
        raise _reject(path, f"the number {value.text} {value.why}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise _reject(path, f"the whole number {_preview(value)} is outside Dataverse's 64-bit range")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{path}[{i}]", nesting + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{path}.{_clip(str(key))}", nesting + 1)


def parse_remote_execution_context(body: bytes, headers: dict[str, str] | None = None) -> DataverseEvent:
    """Validate and convert; raise WebhookRejected(413/400) with the reason."""
    try:
        return _parse(body, headers)
    except RecursionError:  # json.loads' own limit, below MAX_VALUE_NESTING's reach
        raise WebhookRejected(400, "the body is nested too deeply") from None


def _parse(body: bytes, headers: dict[str, str] | None) -> DataverseEvent:
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"the body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
    try:
        context = json.loads(
            body.decode("utf-8-sig"),
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"the body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(context, dict):
        raise WebhookRejected(400, "the body must be a JSON object (a RemoteExecutionContext)")
    missing = [name for name in REQUIRED if not context.get(name)]
    if missing:
        raise WebhookRejected(400, f"missing required field(s): {', '.join(missing)}")
    for name in ("MessageName", "PrimaryEntityName"):
        if not isinstance(context[name], str):
            raise WebhookRejected(400, f"{name} must be a string, got {_preview(context[name])}")
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    stripped = "x-ms-dynamics-msg-size-exceeded" in lowered
    attributes: dict[str, Any] = {}
    row_version = None
    for pair in _pairs(context.get("InputParameters"), "InputParameters"):
        if pair.get("key") == "Target":
            target = pair.get("value")
            if isinstance(target, dict) and (
                "Attributes" in target or str(target.get("__type", "")).startswith("Entity:")
            ):
                attributes = entity_attributes(target, "Target")
                row_version = _row_version(target.get("RowVersion"), "Target.RowVersion")
    if row_version is None and context["MessageName"] != "Delete":
        for pair in _pairs(context.get("PostEntityImages"), "PostEntityImages"):
            image = pair.get("value")
            if isinstance(image, dict):
                row_version = _row_version(image.get("RowVersion"), "PostEntityImages.RowVersion")
            break
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
        depth=_int(context.get("Depth"), "Depth", 1, low=0) or 1,
        stage=_int(context.get("Stage"), "Stage", None),
        mode=_int(context.get("Mode"), "Mode", None),
        organization_id=_optional_guid(context.get("OrganizationId"), "OrganizationId"),
        organization_name=_optional_text(context.get("OrganizationName"), "OrganizationName"),
        size_exceeded=stripped,
        row_version=row_version,
    )


def _row_version(value: Any, name: str) -> int | None:
    """An entity's RowVersion: digits as text (a SQL rowversion as a number), or null."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_ROW_VERSION_DIGITS:
        return int(value)
    raise WebhookRejected(400, f"{name} must be a row version (digits as text), got {_preview(value)}")


def _first_image(value: Any, name: str) -> dict[str, Any]:
    for pair in _pairs(value, name):
        label = pair.get("key")
        return entity_attributes(pair.get("value"), f"{name}[{_name(label) if isinstance(label, str) else 0}]")
    return {}
