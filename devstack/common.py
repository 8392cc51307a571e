"""Helpers shared by the devstack servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.stats import Stats


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def correlation_id() -> str:
    return str(uuid.uuid4())


def stats_routes(stats: Stats) -> list[Route]:
    """``GET /_devstack/stats`` and ``POST /_devstack/stats/reset``."""

    async def show(_: Request) -> JSONResponse:
        return JSONResponse(stats.snapshot())

    async def reset(_: Request) -> JSONResponse:
        stats.reset()
        return JSONResponse({"reset": True})

    return [
        Route("/_devstack/stats", show, methods=["GET"]),
        Route("/_devstack/stats/reset", reset, methods=["POST"]),
    ]


def json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)
