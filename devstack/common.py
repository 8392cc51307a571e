"""Helpers shared by the devstack servers, including the one way every server is configured
(:func:`server_config`), so each has the same header and body read timeouts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import h11
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

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


# -- read timeouts -----------------------------------------------------------------------------------
# uvicorn's timeout_keep_alive only covers the idle time between two requests: a client that sends half a
# request line, or announces a body and stops sending it (slowloris), would hold its connection forever.
# Real front ends cut such clients off; so does every devstack server, with these limits.
HEADER_READ_TIMEOUT_S = 10.0  # connection made (or the next request's first byte) -> the headers' end
BODY_READ_TIMEOUT_S = 30.0  # the headers' end -> the body's end (Content-Length or the last chunk)
REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class ReadTimeouts:
    header_s: float = HEADER_READ_TIMEOUT_S
    body_s: float = BODY_READ_TIMEOUT_S


class ReadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for reading each request's headers and one for its body.

    The header clock starts when the connection is made, or on a kept-alive connection with the next
    request's first byte (the idle time before it is timeout_keep_alive's); it stops when h11 has the whole
    head. The body clock runs from there until the end of the body, and waits while the server itself has
    paused reading (flow control, the app not reading yet) or the client waits for a 100 Continue the app has
    not asked for. On expiry the client gets 408 if anything of the request arrived and no response started,
    and the connection is closed either way; the app, if it was reading, sees a disconnect.
    """

    read_timeouts = ReadTimeouts()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._header_timer = self.loop.call_later(self.read_timeouts.header_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._header_timer = self.loop.call_later(self.read_timeouts.header_s, self._header_timeout)
        super().data_received(data)
        self._follow_request_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request_state()  # a pipelined request may have been parsed just now

    def _follow_request_state(self) -> None:
        state = self.conn.their_state
        if state is not h11.IDLE and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.read_timeouts.body_s, self._body_timeout)
        elif state is not h11.SEND_BODY and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        if partial:  # a connection that never sent a byte is closed without an answer nobody asked for
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The server is the one not reading: not the client's delay, so the clock starts again.
            self._body_timer = self.loop.call_later(self.read_timeouts.body_s, self._body_timeout)
            return
        if cycle is not None:
            if not cycle.response_started:
                cycle.response_started = True  # whatever the app answers later is dropped
                self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            cycle.disconnected = True  # the app's receive() answers http.disconnect, its send() is a no-op
            cycle.message_event.set()
        self.transport.close()


def read_timeout_protocol(timeouts: ReadTimeouts) -> type[ReadTimeoutProtocol]:
    """uvicorn builds the protocol from a class: one subclass per set of limits carries them."""
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeouts": timeouts})


def _quiet_on_disconnect(app: ASGIApp) -> ASGIApp:
    """A client gone mid-body (or cut off by a read timeout) has nobody left to answer: Starlette raises
    ClientDisconnect from ``request.body()``, which uvicorn would log as an application error."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientDisconnect):
            await app(scope, receive, send)

    return wrapped


def server_config(app: ASGIApp, timeouts: ReadTimeouts, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of every devstack server: ``options`` as given, the read timeouts added."""
    return uvicorn.Config(_quiet_on_disconnect(app), http=read_timeout_protocol(timeouts), **options)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_read_timeout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--header-read-timeout", type=_positive_seconds, default=HEADER_READ_TIMEOUT_S, metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after it opened (408 if started)",
    )  # fmt: skip
    parser.add_argument(
        "--body-read-timeout", type=_positive_seconds, default=BODY_READ_TIMEOUT_S, metavar="SECONDS",
        help="answer 408 and close when a request body is not complete this long after its headers",
    )  # fmt: skip


def read_timeouts_from(args: argparse.Namespace) -> ReadTimeouts:
    return ReadTimeouts(header_s=args.header_read_timeout, body_s=args.body_read_timeout)
