"""Request counters served at ``GET /_devstack/stats`` by every devstack server."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Stats:
    """Thread-safe counters: requests by route template and status, by exact path, tokens issued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._routes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._paths: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._tokens: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._counters: dict[str, int] = defaultdict(int)

    def record_request(self, route: str, path: str, status: int) -> None:
        with self._lock:
            self._routes[route][str(status)] += 1
            self._paths[path][str(status)] += 1

    def record_token(self, client_id: str, resource: str) -> None:
        with self._lock:
            self._tokens[client_id][resource] += 1

    def bump(self, counter: str, by: int = 1) -> None:
        with self._lock:
            self._counters[counter] += by

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": {k: dict(v) for k, v in self._routes.items()},
                "paths": {k: dict(v) for k, v in self._paths.items()},
                "tokens_issued": {k: dict(v) for k, v in self._tokens.items()},
                "counters": dict(self._counters),
            }


class StatsMiddleware:
    """Counts every request by its route template (``GET /secrets/{name}``) and by its path."""

    def __init__(self, app: ASGIApp, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_devstack/"):
            await self.app(scope, receive, send)
            return
        status_holder = {"status": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            template = _route_template(scope)
            method = scope["method"]
            self.stats.record_request(f"{method} {template}", f"{method} {scope['path']}", status_holder["status"])


def _route_template(scope: Scope) -> str:
    app = scope.get("app")
    for route in getattr(app, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", scope["path"]))
    return str(scope["path"])
