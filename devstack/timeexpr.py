"""Scenario times: ISO-8601 instants, or offsets from start-up such as ``+180d``, ``-2h``, ``+90s``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_OFFSET = re.compile(r"^([+-])(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def resolve_time(value: str | int | float | datetime, now: datetime) -> datetime:
    """Turn a scenario time expression into an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    match = _OFFSET.match(value.strip())
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(seconds=int(amount) * _UNIT_S[unit])
        return now + delta if sign == "+" else now - delta
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
