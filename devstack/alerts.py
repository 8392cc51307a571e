"""An alert sink standing in for Teams Workflows, Slack and a generic JSON receiver: it records what it
receives (``GET /_devstack/alerts``) and can be told to fail a channel (``POST /_devstack/control``).

Teams' Workflows trigger answers ``202 Accepted``; Slack's incoming webhook answers ``200`` with the body
``ok``; the generic receiver ``200``. Plain HTTP on loopback, like the managed-identity endpoint. Like the
other servers it takes ``POST /_devstack/outage`` (devstack.outage): a channel down, or slow (``delay_s``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from devstack.common import stats_routes
from devstack.outage import service_middleware
from devstack.stats import Stats

PLACEHOLDER = "devstack-alert-sink:"  # a vault secret value naming a channel; replaced by its URL at start-up


@dataclass
class AlertSink:
    stats: Stats = field(default_factory=Stats)
    received: list[dict[str, Any]] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)  # channel -> status to answer instead
    lock: threading.Lock = field(default_factory=threading.Lock)


def alerts_app(sink: AlertSink) -> Starlette:
    async def receive(request: Request) -> Response:
        channel = request.path_params["channel"]
        status = sink.failing.get(channel)
        if status:
            return JSONResponse({"error": f"channel {channel} is failing (devstack control)"}, status_code=status)
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)  # what Slack answers
        with sink.lock:
            sink.received.append({"channel": channel, "body": body, "at": time.time()})
        if channel == "teams":
            return Response(status_code=202)
        if channel == "slack":
            return PlainTextResponse("ok")
        return JSONResponse({"ok": True})

    async def show(request: Request) -> Response:
        channel = request.query_params.get("channel")
        with sink.lock:
            items = [a for a in sink.received if channel is None or a["channel"] == channel]
        return JSONResponse({"alerts": items})

    async def reset(_: Request) -> Response:
        with sink.lock:
            sink.received.clear()
        return JSONResponse({"ok": True})

    async def control(request: Request) -> Response:
        action = await request.json()
        if "fail" in action:
            sink.failing = {str(k): int(v) for k, v in (action["fail"] or {}).items()}
        return JSONResponse({"ok": True, "failing": sink.failing})

    return Starlette(
        routes=[
            Route("/hooks/{channel}", receive, methods=["POST"]),
            Route("/_devstack/alerts", show, methods=["GET"]),
            Route("/_devstack/alerts/reset", reset, methods=["POST"]),
            Route("/_devstack/control", control, methods=["POST"]),
            *stats_routes(sink.stats),
        ],
        middleware=service_middleware(sink.stats),
    )
