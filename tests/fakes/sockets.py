"""``no_sockets``: import it into a test module (it is autouse) to prove the module's tests open no
connection and resolve no name; any attempt fails the test at the call that tried."""

from __future__ import annotations

import socket
from typing import Any

import pytest


class SocketUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SocketUsed(f"a unit test touched the network: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
