"""Simulated outages: ``POST /_devstack/outage {"seconds": 30}`` makes a server answer every request with
503 for that long, as a region or service incident would. Served by Entra (and Graph), the managed-identity
endpoint, Key Vault and Dataverse; the reliability matrix uses it for "Key Vault down for 30 s".

An outage can be narrowed to some requests: ``"methods": ["PUT"]`` and/or ``"path_contains": "/secrets/"``
(e.g. Key Vault refusing writes while reads still work, the moment a rotation stores its new secret).
``"delay_s": 5`` instead holds each matching request that long and then serves it (a slow dependency, or a
test that must act between two calls of the app).

The 503 carries each service's error envelope shape closely enough for the SDKs to classify it as a
transient server error (azure-core and msal both retry 503 a few times, then raise).
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.stats import Stats, StatsMiddleware

OUTAGE_PATH = "/_devstack/outage"


class OutageMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.until = 0.0
        self.methods: frozenset[str] = frozenset()  # empty: every method
        self.path_contains = ""
        self.delay_s = 0.0

    def _matches(self, scope: Scope) -> bool:
        if self.methods and scope["method"] not in self.methods:
            return False
        return self.path_contains in scope["path"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == OUTAGE_PATH and scope["method"] == "POST":
            body = b""
            while True:
                message: Message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            spec = json.loads(body or b"{}")
            seconds = float(spec.get("seconds", 0))
            self.until = time.monotonic() + seconds
            self.methods = frozenset(str(m).upper() for m in spec.get("methods") or ())
            self.path_contains = str(spec.get("path_contains") or "")
            self.delay_s = float(spec.get("delay_s") or 0)
            await _answer(send, 200, {"ok": True, "down_for_s": seconds})
            return
        active = not scope["path"].startswith("/_devstack/") and time.monotonic() < self.until
        if active and self._matches(scope) and self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        elif active and self._matches(scope):
            await _answer(
                send,
                503,
                {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."}},
            )
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def service_middleware(stats: Stats) -> list[Middleware]:
    """What every emulated service wraps itself in: request statistics outside (they see the 503s), outages."""
    return [Middleware(StatsMiddleware, stats=stats), Middleware(OutageMiddleware)]
