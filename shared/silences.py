"""Silences: acknowledging or snoozing an alert, shared by the credential-expiry monitor and the webhook
incidents of the failed-delivery watcher (the same body, the same answers, the same wording)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.http_input import RequestRejected, json_object, number_field, text_field, time_field

MAX_SILENCE_BODY_BYTES = 4 * 1024  # {"by": ..., "until": ...}: a few dozen bytes; anything large is not ours
SILENCE_FIELDS = ("by", "until", "days")
SILENCE_EXAMPLES = {
    "ack": '{"by": "ops@contoso.com", "days": 3}',
    "snooze": '{"until": "2026-12-01T00:00:00Z"} or {"days": 3}',
}
MAX_BY_CHARS = 256  # a name or an e-mail address (RFC 5321 caps an address at 254)


def silence_body(raw: bytes, action: str, *, max_days: int) -> dict[str, Any]:
    """An ack or snooze body checked: ``by`` (required to ack), ``until`` (after now, at most ``max_days``
    away) or ``days`` (required to snooze, one of the two); every refusal names the field."""
    body = json_object(raw, limit_bytes=MAX_SILENCE_BODY_BYTES, fields=SILENCE_FIELDS, example=SILENCE_EXAMPLES[action])
    checked: dict[str, Any] = {
        "by": text_field(body, "by", max_chars=MAX_BY_CHARS, what="who silences it (a name or e-mail)"),
        "until": time_field(body, "until"),
        "days": number_field(body, "days", above=0, at_most=max_days, unit="days"),
    }
    if checked["until"] is not None and checked["days"] is not None:
        raise RequestRejected(400, "send either until or days, not both")
    if action == "ack" and checked["by"] is None:
        raise RequestRejected(400, "field 'by' is required: who acknowledges (a name or e-mail)")
    if action == "snooze" and checked["until"] is None and checked["days"] is None:
        raise RequestRejected(400, "field 'until' or 'days' is required")
    now = datetime.now(UTC)  # the wall clock, which the monitor and the watcher also keep
    until = checked["until"]
    if until is not None and not now < until <= now + timedelta(days=max_days):
        raise RequestRejected(
            400,
            f"until must be after now ({now:%Y-%m-%dT%H:%M:%SZ}) and at most {max_days} days away,"
            f" got {until:%Y-%m-%dT%H:%M:%SZ}",
        )
    return checked


def refusal_text(exc: RequestRejected, action: str) -> str:
    """A refused silence's message; a 400 also shows a good body."""
    example = SILENCE_EXAMPLES[action]
    return exc.reason + (f"; send {example}" if exc.status == 400 and example not in exc.reason else "")


def silence_reason(
    acknowledged_by: str | None, acknowledged_until: datetime | None, snoozed_until: datetime | None, now: datetime
) -> str | None:
    """Why an alert is withheld now (an acknowledgement or a snooze still running), or None."""
    if acknowledged_until and now < acknowledged_until:
        return f"acknowledged by {acknowledged_by} until {acknowledged_until:%Y-%m-%d %H:%M} UTC"
    if snoozed_until and now < snoozed_until:
        return f"snoozed until {snoozed_until:%Y-%m-%d %H:%M} UTC"
    return None
