"""What HTTP routes accept from a caller, checked in one place: query-string parameters and JSON bodies.

Bad input is refused with :class:`RequestRejected` (400, or 413 for a body over its limit) and a reason
naming the parameter or field and what would be accepted, so a caller can fix the request; the routes
answer it as ``{"error": reason}``. A dependency's failure is answered through
``shared.failure_answers``.

Only the standard library at module level: the blueprints import this while the host indexes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from shared.errors import DvbridgeError

FUNCTION_KEY_PARAM = "code"  # the Functions host's ?code=<key>: every keyed route receives it in its query
PREVIEW_CHARS = 40  # how much of a refused value or name a reason quotes
# A JSON number literal longer than this is no count of days or items: refused before int() sees it
# (Python refuses ints of more than 4,300 digits with a ValueError, and converting them is quadratic).
MAX_NUMBER_CHARS = 32
logger = logging.getLogger(__name__)
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() also takes " 5", "+5", "5_0" and other scripts' digits


class RequestRejected(DvbridgeError):
    """A request's input is refused: 400 malformed, 413 too large; ``reason`` names what and the fix."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"request rejected ({status}): {reason}")


def preview(value: Any) -> str:
    """A caller's value as a refusal quotes it: short, and containers by their kind."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = value if isinstance(value, str) else json.dumps(value)
    clipped = text[:PREVIEW_CHARS] + "..." if len(text) > PREVIEW_CHARS else text
    return repr(clipped) if isinstance(value, str) else clipped


# -- query strings -----------------------------------------------------------------------------------------
def query(params: Mapping[str, str], declared: Collection[str]) -> Mapping[str, str]:
    """The query parameters, refusing any the route does not declare: a misspelt ``?limt=5`` would
    otherwise be ignored and the default used. The function key (``?code=``) is always allowed; its
    value is never read or quoted."""
    unknown = sorted(name for name in params if name not in declared and name.lower() != FUNCTION_KEY_PARAM)
    if unknown:
        names = ", ".join(preview(name) for name in unknown[:5])
        takes = ", ".join(sorted(declared)) if declared else "none"
        raise RequestRejected(400, f"unknown query parameter(s) {names}; this route takes: {takes}")
    return params


def int_param(params: Mapping[str, str], name: str, *, low: int, high: int, default: int) -> int:
    """A whole-number parameter in ``low..high``: ASCII digits only, so ``1e3``, ``-1``, `` 5`` are refused."""
    raw = params.get(name)
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw) is None or len(raw) > MAX_NUMBER_CHARS or not low <= int(raw) <= high:
        rule = f"{name} must be a whole number {low}..{high} (default {default})"
        raise RequestRejected(400, f"{rule}, got {preview(raw)}")
    return int(raw)


def text_param(params: Mapping[str, str], name: str, *, pattern: re.Pattern[str], shape: str) -> str | None:
    """An optional text parameter matching ``pattern`` in full; present but empty is refused, not ignored."""
    raw = params.get(name)
    if raw is None:
        return None
    if pattern.fullmatch(raw) is None:
        raise RequestRejected(400, f"{name} must be {shape}, got {preview(raw)}")
    return raw


# -- JSON bodies --------------------------------------------------------------------------------------------
def json_object(raw: bytes, *, limit_bytes: int, fields: Collection[str], example: str) -> dict[str, Any]:
    """The body as a JSON object with only the declared fields; an empty body is ``{}``. ``example`` is a
    good body, quoted in every refusal."""
    if len(raw) > limit_bytes:
        raise RequestRejected(413, f"the body is {len(raw):,} bytes; at most {limit_bytes:,} are accepted")
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(400, f"the body is not UTF-8 text; send JSON such as {example}") from None
    try:
        # NaN and Infinity (which json.loads admits) become floats that a field's range check refuses by name.
        body = json.loads(text, parse_int=_parse_int, object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise RequestRejected(400, f"the body is not JSON ({str(exc)[:80]}); send JSON such as {example}") from None
    if not isinstance(body, dict):
        raise RequestRejected(400, f"the body must be a JSON object such as {example}, not {preview(body)}")
    unknown = sorted(name for name in body if name not in fields)
    if unknown:
        names = ", ".join(preview(name) for name in unknown[:5])
        raise RequestRejected(400, f"unknown field(s) {names}; the fields are {', '.join(fields)}")
    return body


def _parse_int(text: str) -> int | float:
    # A literal of thousands of digits becomes a float (inf), which the field's range check refuses by name.
    return int(text) if len(text) <= MAX_NUMBER_CHARS else float(text)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in pairs:
        if name in body:  # json.loads would keep the last silently
            raise ValueError(f"field {preview(name)} appears twice")
        body[name] = value
    return body


def number_field(body: Mapping[str, Any], name: str, *, above: float, at_most: float, unit: str) -> float | None:
    """An optional number in ``(above, at_most]``; booleans are not numbers here (``true`` is not 1 day)."""
    if name not in body:
        return None
    value = body[name]
    rule = f"{name} must be a number of {unit} greater than {above:g} and at most {at_most:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    if not math.isfinite(value) or not above < value <= at_most:
        raise RequestRejected(400, f"{rule}, got {value:g}")
    return float(value)


def text_field(body: Mapping[str, Any], name: str, *, max_chars: int, what: str) -> str | None:
    """An optional non-blank string of at most ``max_chars`` characters (surrounding spaces removed)."""
    if name not in body:
        return None
    value = body[name]
    rule = f"{name} must be {what}: text of 1..{max_chars} characters"
    if not isinstance(value, str):
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    text = value.strip()
    if not text or len(text) > max_chars or not text.isprintable():
        raise RequestRejected(400, f"{rule} without control characters, got {preview(value)}")
    return text


def time_field(body: Mapping[str, Any], name: str) -> datetime | None:
    """An optional ISO-8601 moment; without a zone it is UTC."""
    if name not in body:
        return None
    value = body[name]
    rule = f'{name} must be an ISO-8601 time such as "2026-12-01T00:00:00Z"'
    # ISO-8601 is printable ASCII; CPython's fromisoformat stops at a NUL, so "...Z\x00" would pass.
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: "0001-01-01T00:00+01:00" has no UTC moment
        raise RequestRejected(400, f"{rule}, got {preview(value)}") from None
