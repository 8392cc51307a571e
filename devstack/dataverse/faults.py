"""Injected faults, from the scenario (``dataverse.faults``) and from ``POST /_devstack/control``.

A fault matches a route (a regex over ``"METHOD path"``, e.g. ``"POST accounts"``) and fires either for
the next ``count`` matching requests or with probability ``rate`` (seeded, so runs repeat). Kinds:
``429`` (with ``code`` one of the three service-protection codes), ``500``/``502``/``503``/``504``,
``reset`` (the connection breaks mid-response: an ASGI app cannot reach the socket to reset it
before the first byte, so clients see ``IncompleteRead``/"Connection broken"), ``slow`` (``delay_ms`` more latency), and
``sql_timeout`` (bulk or $batch requests with at least ``min_records`` records fail as SQL timeouts).
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

THROTTLE_MESSAGES = {
    "0x80072322": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    "0x80072321": (
        "Combined execution time of incoming requests exceeded limit of 1,200,000  milliseconds over time window of"
        " 300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later."
    ),
    "0x80072326": "Number of concurrent requests exceeded the limit of 52.",
}
SERVER_ERRORS = {
    500: ("0x80040216", "An unexpected error occurred."),
    502: ("0x80040216", "Bad Gateway"),
    503: ("0x80040216", "Service Unavailable"),
    504: ("0x80040216", "Gateway Timeout"),
}
SQL_TIMEOUT = ("0x80044151", "Sql error: 'SQL timeout expired.'")  # -2147204783: the batch is too large


@dataclass
class Fault:
    kind: str
    route: str = ".*"
    rate: float | None = None
    count: int | None = None
    code: str = "0x80072322"
    retry_after_s: int = 1
    delay_ms: float = 0.0
    min_records: int = 0

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Fault:
        known = {k: v for k, v in spec.items() if k in cls.__dataclass_fields__}
        known["kind"] = str(known.get("kind", ""))
        fault = cls(**known)
        if fault.kind not in {"429", "500", "502", "503", "504", "reset", "slow", "sql_timeout"}:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.kind == "429" and fault.code not in THROTTLE_MESSAGES:
            raise ValueError(f"429 faults take one of the codes {sorted(THROTTLE_MESSAGES)}")
        return fault


class FaultInjector:
    def __init__(self, faults: list[Fault] | None = None, *, seed: int = 7) -> None:
        self._faults = list(faults or [])
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.max_token_age_s: float | None = None
        self.tokens_not_before: int | None = None  # Unix seconds: tokens issued earlier are refused (a rotation)

    def replace(self, faults: list[Fault], max_token_age_s: float | None) -> None:
        with self._lock:
            self._faults = faults
            self.max_token_age_s = max_token_age_s

    def pick(self, method: str, path: str, records: int) -> Fault | None:
        target = f"{method} {path}"
        with self._lock:
            for fault in self._faults:
                if not re.match(fault.route, target):
                    continue
                if fault.kind == "sql_timeout" and records < fault.min_records:
                    continue
                if fault.count is not None:
                    if fault.count <= 0:
                        continue
                    fault.count -= 1
                    return fault
                if fault.rate is not None and self._rng.random() < fault.rate:
                    return fault
        return None


class ConnectionReset:
    """An ASGI response that starts, promises a body and then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"4096"), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"value":[', "more_body": True})
        raise ConnectionResetError("devstack fault: connection reset")
