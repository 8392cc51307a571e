"""Header and body read timeouts on every devstack server (devstack/common.py), over raw sockets: a client
that sends its headers or body too slowly (slowloris) is cut off, and the server keeps serving others."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.devstack_process import ARTIFACTS, ROOT, DevstackProcess, subprocess_env

pytestmark = pytest.mark.integration

FIXTURE_APP = ROOT / "tests" / "e2e" / "fixture_app"
HEADER_TIMEOUT_S = 1.0  # what the servers under test are started with (the defaults are far longer)
BODY_TIMEOUT_S = 1.0
EARLY_TOLERANCE_S = 0.15  # timers fire on the event loop's clock; the test's clock starts a little later
LATE_MARGIN_S = 3.0  # a busy two-core machine; without the timeouts the connection is held indefinitely
TRICKLE_INTERVAL_S = 0.2  # one byte per interval: never idle for long, so only a total deadline cuts it off
TIMEOUT_ARGS = ("--header-read-timeout", str(HEADER_TIMEOUT_S), "--body-read-timeout", str(BODY_TIMEOUT_S))
HOST_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    probe: str  # a GET answered 200
    body_reader: str | None  # a POST whose handler reads the body before it answers

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        assert parts.port is not None
        return parts.hostname, parts.port

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")


SERVER_NAMES = ["entra", "managed-identity", "keyvault", "dataverse", "alerts", "host", "host-process"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("timeouts"), "timeouts",
        "--host", "--app-dir", str(FIXTURE_APP), "--host-port", "0", "--memory", "--time-scale", "0.01",
        *TIMEOUT_ARGS,
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def host_process(stack: DevstackProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m devstack host`` (devstack/host_main.py): its own server start-up, the same limits."""
    state = tmp_path_factory.mktemp("timeouts-host")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "host", "--env-file", str(stack.directory / "env"),
         "--app-dir", str(FIXTURE_APP), "--state-dir", str(state), *TIMEOUT_ARGS],
        cwd=ROOT, env=subprocess_env({}), stdout=subprocess.PIPE,
        stderr=(ARTIFACTS / "host-timeouts.log").open("a"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("host ready"), line
    yield line.split()[2]
    proc.terminate()
    try:
        proc.wait(timeout=HOST_START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def servers(stack: DevstackProcess, host_process: str) -> dict[str, Server]:
    env = stack.env
    stats, control = "/_devstack/stats", "/_devstack/control"
    return {
        s.name: s
        for s in [
            Server("entra", env["DEVSTACK_ENTRA_URL"], stats, control),
            Server("managed-identity", env["DEVSTACK_MANAGED_IDENTITY_URL"], stats, None),
            Server("keyvault", env["DEVSTACK_KEY_VAULT_URL"], stats, control),
            Server("dataverse", env["DEVSTACK_DATAVERSE_URL"], stats, control),
            Server("alerts", env["DEVSTACK_ALERTS_URL"], stats, control),
            Server("host", env["FUNCTIONS_BASE_URL"], "/_devstack/functions", "/api/public"),
            Server("host-process", host_process, "/_devstack/functions", "/api/public"),
        ]
    }


@pytest.fixture
def tls_context(stack: DevstackProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.env["DEVSTACK_CA_CERT"])


def connect(server: Server, context: ssl.SSLContext) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=LATE_MARGIN_S)
    if server.tls:
        return context.wrap_socket(sock, server_hostname=server.address[0])  # handshake done here
    return sock


def normal_request(server: Server, stack: DevstackProcess) -> int:
    verify = stack.env["DEVSTACK_CA_CERT"] if server.tls else True
    return requests.get(server.url + server.probe, verify=verify, timeout=LATE_MARGIN_S).status_code


def trickle_until_cut(
    sock: socket.socket, payload: bytes, *, limit_s: float, meanwhile: Callable[[], None] | None = None
) -> tuple[bytes, float, bool]:
    """Send ``payload`` a byte per interval, then nothing; return what the server sent, when it closed (from
    this call on), and whether it did within ``limit_s``. ``meanwhile`` runs once while this client is held."""
    started = time.monotonic()
    received = b""
    pending = list(payload)
    sock.settimeout(TRICKLE_INTERVAL_S)
    while time.monotonic() - started < limit_s:
        if pending:
            try:
                sock.sendall(bytes([pending.pop(0)]))
            except OSError:
                return received, time.monotonic() - started, True
        if meanwhile is not None and time.monotonic() - started > TRICKLE_INTERVAL_S:
            meanwhile()
            meanwhile = None
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return received, time.monotonic() - started, True
        if not chunk:
            return received, time.monotonic() - started, True
        received += chunk
    return received, time.monotonic() - started, False


def stall_until_cut(sock: socket.socket, sent: bytes, *, limit_s: float) -> tuple[bytes, float, bool]:
    sock.sendall(sent)
    return trickle_until_cut(sock, b"", limit_s=limit_s)


def assert_cut_off(result: tuple[bytes, float, bool], timeout_s: float, *, answer: bytes | None) -> None:
    received, elapsed, closed = result
    assert closed, f"still open after {elapsed:.1f} s (received {received[:80]!r})"
    assert elapsed >= timeout_s - EARLY_TOLERANCE_S, f"cut off after {elapsed:.2f} s, before the timeout"
    if answer is not None:
        assert received.startswith(answer), received[:200]


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length body, leaving the connection open."""
    sock.settimeout(LATE_MARGIN_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.strip().lower() == "content-length")
    while len(body) < length:
        body += sock.recv(4096)
    return int(lines[0].split()[1]), body[:length]


REQUEST_TIMEOUT = b"HTTP/1.1 408"


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_slow_headers_are_cut_off_while_others_are_served(
    name: str, servers: dict[str, Server], stack: DevstackProcess, tls_context: ssl.SSLContext
) -> None:
    server = servers[name]
    statuses: list[int] = []
    with connect(server, tls_context) as slow:
        head = f"GET {server.probe} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {'a' * 40}\r\n\r\n".encode()
        result = trickle_until_cut(
            slow, head, limit_s=HEADER_TIMEOUT_S + LATE_MARGIN_S,
            meanwhile=lambda: statuses.append(normal_request(server, stack)),
        )  # fmt: skip
    assert statuses == [200]
    assert_cut_off(result, HEADER_TIMEOUT_S, answer=REQUEST_TIMEOUT)
    assert result[1] < len(head) * TRICKLE_INTERVAL_S  # cut off long before the headers would have ended


@pytest.mark.parametrize("name", ["entra", "alerts", "host"])
def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    name: str, servers: dict[str, Server], tls_context: ssl.SSLContext
) -> None:
    with connect(servers[name], tls_context) as silent:
        result = stall_until_cut(silent, b"", limit_s=HEADER_TIMEOUT_S + LATE_MARGIN_S)
    assert_cut_off(result, HEADER_TIMEOUT_S, answer=None)
    assert result[0] == b""


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_half_a_request_line_on_a_kept_alive_connection_is_cut_off(
    name: str, servers: dict[str, Server], tls_context: ssl.SSLContext
) -> None:
    server = servers[name]
    with connect(server, tls_context) as conn:
        conn.sendall(f"GET {server.probe} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert read_response(conn)[0] == 200
        result = stall_until_cut(conn, b"GET /_devstack/st", limit_s=HEADER_TIMEOUT_S + LATE_MARGIN_S)
    assert_cut_off(result, HEADER_TIMEOUT_S, answer=REQUEST_TIMEOUT)


def body_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_a_stalled_body_is_answered_408_while_others_are_served(
    name: str, servers: dict[str, Server], stack: DevstackProcess, tls_context: ssl.SSLContext
) -> None:
    server = servers[name]
    path = server.body_reader or "/_devstack/stats/reset"  # answers without reading: the body still times out
    statuses: list[int] = []
    with connect(server, tls_context) as stalled:
        stalled.sendall(body_head(path, 100) + b'{"a": ')
        result = trickle_until_cut(
            stalled, b"", limit_s=BODY_TIMEOUT_S + LATE_MARGIN_S,
            meanwhile=lambda: statuses.append(normal_request(server, stack)),
        )  # fmt: skip
    assert statuses == [200]
    if server.body_reader is not None:
        assert_cut_off(result, BODY_TIMEOUT_S, answer=REQUEST_TIMEOUT)
    else:  # the app's early answer went out; the connection still closes at the body deadline
        assert_cut_off(result, BODY_TIMEOUT_S, answer=b"HTTP/1.1 200")


@pytest.mark.parametrize("name", ["dataverse", "alerts", "host", "host-process"])
def test_a_trickled_body_is_cut_off_at_the_deadline(
    name: str, servers: dict[str, Server], tls_context: ssl.SSLContext
) -> None:
    server = servers[name]
    assert server.body_reader is not None
    body = b'{"x": "' + b"a" * 60 + b'"}'
    with connect(server, tls_context) as trickling:
        trickling.sendall(body_head(server.body_reader, len(body)))
        result = trickle_until_cut(trickling, body, limit_s=BODY_TIMEOUT_S + LATE_MARGIN_S)
    assert_cut_off(result, BODY_TIMEOUT_S, answer=REQUEST_TIMEOUT)
    assert result[1] < len(body) * TRICKLE_INTERVAL_S


@pytest.mark.parametrize("name", ["host", "host-process"])
def test_bodies_within_the_deadline_are_read_whole(
    name: str, servers: dict[str, Server], tls_context: ssl.SSLContext
) -> None:
    """Larger than uvicorn's read buffer (flow control pauses reading), and in pieces with pauses."""
    server = servers[name]
    big = b"x" * (1024 * 1024)
    with connect(server, tls_context) as conn:
        conn.sendall(body_head("/api/public", len(big)) + big)
        assert read_response(conn) == (201, big)
        pieces = [b"one ", b"two ", b"three"]
        conn.sendall(body_head("/api/public", sum(map(len, pieces))))
        for piece in pieces:
            time.sleep(BODY_TIMEOUT_S / (len(pieces) + 2))
            conn.sendall(piece)
        assert read_response(conn) == (201, b"".join(pieces))


def test_the_limits_are_required_to_be_positive(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--dir", str(tmp_path), "--no-azurite", "--header-read-timeout", "0"],
        cwd=ROOT, env=subprocess_env({}), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "not a positive number of seconds" in completed.stderr
