"""Simulated outages: ``POST /_devstack/outage {"seconds": 30}`` makes a server answer every request with
503 for that long, as a region or service incident would. Served by Entra (and Graph), the managed-identity
endpoint, Key Vault and Dataverse; the reliability matrix uses it for "Key Vault down for 30 s".

The 503 carries each service's error envelope shape closely enough for the SDKs to classify it as a
transient server error (azure-core and msal both retry 503 a few times, then raise).
"""

from __future__ import annotations

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
            seconds = float(json.loads(body or b"{}").get("seconds", 0))
            self.until = time.monotonic() + seconds
            await _answer(send, 200, {"ok": True, "down_for_s": seconds})
            return
        if not scope["path"].startswith("/_devstack/") and time.monotonic() < self.until:
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
