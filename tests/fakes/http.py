"""HTTP without sockets: ``FakeHttp`` is a ``requests`` transport adapter answering from handlers, so code
under test keeps its real ``requests.Session`` (params, ``json=`` bodies, headers, ``response.json()``
errors) and only the wire is in memory. Every request is recorded."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

__all__ = ["Answer", "FakeHttp", "Handler", "Recorded", "answer"]


@dataclass(frozen=True)
class Recorded:
    """One request as it left the session (after ``requests`` encoded it)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: Any

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def answer(status: int = 200, body: Any = None, headers: Mapping[str, str] | None = None) -> Answer:
    """A JSON answer (``body`` serialized unless it is already bytes or text)."""
    all_headers = dict(headers or {})
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
        all_headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    elif body is None:
        data = b""
    else:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json; charset=utf-8")
    return Answer(status, data, all_headers)


Handler = Callable[[Recorded], Answer]  # may raise requests.ConnectionError / requests.Timeout


class FakeHttp(BaseAdapter):
    """Routes by origin (``scheme://host[:port]``, optionally with a path prefix); an unrouted request is a
    connection error, as an address nobody listens on would be."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: list[tuple[str, Handler]] = []
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []

    def route(self, prefix: str, handler: Handler) -> None:
        """Answer every request whose URL starts with ``prefix``; the longest prefix wins."""
        self._routes.append((prefix.rstrip("/"), handler))
        self._routes.sort(key=lambda r: len(r[0]), reverse=True)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.mount("http://", self)
        session.mount("https://", self)
        session.trust_env = False  # no proxy or .netrc from the machine running the tests
        return session

    def to(self, prefix: str) -> list[Recorded]:
        """The requests sent under ``prefix``."""
        return [r for r in self.requests if r.url.startswith(prefix.rstrip("/"))]

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:  # fmt: skip
        body = request.body or b""
        recorded = Recorded(
            method=str(request.method),
            url=str(request.url),
            headers=CaseInsensitiveDict(request.headers),
            body=body.encode() if isinstance(body, str) else bytes(body),
            timeout=timeout,
        )
        with self._lock:
            self.requests.append(recorded)
        handler = next((h for prefix, h in self._routes if recorded.url.startswith(prefix)), None)
        if handler is None:
            raise requests.ConnectionError(f"nothing listens at {recorded.origin} (FakeHttp has no route)",
                                           request=request)  # fmt: skip
        result = handler(recorded)
        response = requests.Response()
        response.status_code = result.status
        response.reason = _REASONS.get(result.status, "")
        response.headers = CaseInsensitiveDict(result.headers)
        response._content = result.body
        response.url = recorded.url
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip
