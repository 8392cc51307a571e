"""The one outgoing HTTP layer: each policy's statuses and attempts, Retry-After (seconds and HTTP-date)
honoured once, the deadline, no re-send of a POST whose connection broke, DownstreamError naming only the
target's scheme and host, and the hooks the Dataverse client sits on (governor slot, 401 refresh)."""

from __future__ import annotations

import http.server
import threading
import traceback
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from typing import Any

import pytest
import requests

from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.governor import ThrottleGovernor
from shared.errors import DataverseError, DownstreamError, ThrottledError
from shared.expiry.notify import Channel, Notifier
from shared.graph import GraphReader
from shared.outgoing_http import (
    DATAVERSE,
    FORWARD,
    GRAPH,
    HTTP_SINK,
    NOTIFY,
    POLICIES,
    PROBE,
    SOURCE_API,
    HttpCaller,
    RetryPolicy,
    origin,
    retry_after_s,
)
from shared.sync.http_sink import post_changes
from shared.webhooks.forward import forward_event

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
Outcome = int | tuple[int, dict[str, str]] | Exception


def response(status: int, headers: dict[str, str] | None = None, body: bytes = b"{}") -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer.headers.update(headers or {})
    answer._content = body
    return answer


class FakeSession:
    """Answers from a script (the last outcome repeats); records each request's method, URL and kwargs."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append((method, url, kwargs))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        status, headers = outcome if isinstance(outcome, tuple) else (outcome, {})
        return response(status, headers)


class Clock:
    """A monotonic clock that a sleep moves on, so deadlines are tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class NoJitter:
    def random(self) -> float:
        return 0.0


def caller(session: FakeSession, policy: RetryPolicy, clock: Clock | None = None, **kwargs: Any) -> HttpCaller:
    clock = clock or Clock()
    return HttpCaller(
        session,  # type: ignore[arg-type]
        policy,
        sleep=clock.sleep,
        clock=clock,
        wall_clock=lambda: NOW,
        rng=NoJitter(),  # type: ignore[arg-type]
        **kwargs,
    )


# -- the policies ----------------------------------------------------------------------------------------


def test_each_policy_keeps_its_attempts_and_statuses() -> None:
    transient = {408, 429, 500, 502, 503, 504}
    table = {
        name: (p.name, p.attempts, set(p.retry_statuses), p.retry_connection_errors) for name, p in POLICIES.items()
    }
    assert table == {
        "DATAVERSE": ("Dataverse", 8, {429, 502, 503, 504}, True),
        "SOURCE_API": ("source API", 6, {429, 500, 502, 503, 504}, True),
        "HTTP_SINK": ("HTTP sink", 5, transient, True),
        "FORWARD": ("forward target", 4, transient, True),
        "NOTIFY": ("notification channel", 3, transient, True),
        "GRAPH": ("Microsoft Graph", 3, {429, 503, 504}, True),
        "PROBE": ("Dataverse", 1, set(), False),
        "ENTRA_DISCOVERY": ("Entra ID", 1, set(), False),
    }
    assert [name for name, p in POLICIES.items() if p.resend_posts] == ["HTTP_SINK", "FORWARD", "NOTIFY"]


CASES = [(name, status) for name, p in POLICIES.items() for status in sorted(p.retry_statuses)]


@pytest.mark.parametrize(("name", "status"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_a_retried_status_is_sent_the_policys_attempts_then_raised_as_retryable(name: str, status: int) -> None:
    policy = POLICIES[name]
    session = FakeSession(status)
    with pytest.raises(DownstreamError) as caught:
        caller(session, policy).send("GET", "https://api.example/x")
    assert len(session.sent) == policy.attempts
    assert (caught.value.status, caught.value.retryable, caught.value.service) == (status, True, policy.name)


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_another_4xx_fails_at_once_and_is_not_retryable(name: str, status: int) -> None:
    session = FakeSession(status)
    with pytest.raises(DownstreamError) as caught:
        caller(session, POLICIES[name]).send("POST", "https://api.example/x", json={})
    assert len(session.sent) == 1
    assert (caught.value.status, caught.value.retryable) == (status, False)


@pytest.mark.parametrize("name", list(POLICIES))
def test_connection_errors_are_retried_where_the_policy_says(name: str) -> None:
    policy = POLICIES[name]
    session = FakeSession(requests.ConnectionError("refused"))
    with pytest.raises(DownstreamError) as caught:
        caller(session, policy).send("GET", "https://api.example/x")
    assert len(session.sent) == (policy.attempts if policy.retry_connection_errors else 1)
    assert (caught.value.status, caught.value.retryable) == (None, True)


def test_a_retry_that_succeeds_returns_the_answer_and_counts_every_request() -> None:
    session = FakeSession(503, requests.ConnectionError("reset"), 200)
    http = caller(session, SOURCE_API)
    assert http.send("GET", "https://api.example/x").status_code == 200
    assert http.requests_sent == 3


def test_the_http_sink_sends_a_refused_batch_once_and_names_its_offset() -> None:
    session = FakeSession(200, 400)
    changes = [{"id": n} for n in range(5)]
    with pytest.raises(DownstreamError) as caught:
        post_changes("https://sink.example/in", "accounts", changes, 3, caller=caller(session, HTTP_SINK))
    assert len(session.sent) == 2  # the first batch, then the refused one exactly once
    assert session.sent[1][2]["json"] == {"job": "accounts", "changes": changes[3:]}
    assert "offset 3" in str(caught.value)
    assert "delta link is kept" in str(caught.value)
    assert caught.value.retryable is False


def test_the_http_sink_retries_a_transient_failure() -> None:
    session = FakeSession(503, 200)
    assert post_changes("https://sink.example/in", "j", [{"id": 1}], 10, caller=caller(session, HTTP_SINK)) == 1
    assert len(session.sent) == 2


# -- Retry-After ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (formatdate(NOW + 12, usegmt=True), 12.0),  # IMF-fixdate
        ("Tuesday, 14-Nov-23 22:13:32 GMT", 12.0),  # the obsolete RFC 850 form
        ("Tue Nov 14 22:13:32 2023", 12.0),  # asctime
        (formatdate(NOW - 60, usegmt=True), 0.0),  # a date gone by: retry now
        ("-3", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
    ],
)
def test_retry_after_is_read_in_both_forms(value: str, seconds: float | None) -> None:
    assert retry_after_s(response(503, {"Retry-After": value}), now=lambda: NOW) == seconds


def test_no_retry_after_header_or_no_response_is_none() -> None:
    assert retry_after_s(response(503)) is None
    assert retry_after_s(None) is None


@pytest.mark.parametrize("value", ["7", formatdate(NOW + 7, usegmt=True)])
def test_retry_after_is_the_wait(value: str) -> None:
    clock = Clock()
    session = FakeSession((503, {"Retry-After": value}), 200)
    caller(session, SOURCE_API, clock).send("GET", "https://api.example/x")
    assert clock.sleeps == [7.0]


def test_without_retry_after_the_wait_backs_off() -> None:
    clock = Clock()
    with pytest.raises(DownstreamError):
        caller(FakeSession(503), SOURCE_API, clock).send("GET", "https://api.example/x")
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_wait_past_the_deadline_gives_up_instead() -> None:
    clock = Clock()
    session = FakeSession((503, {"Retry-After": "400"}))
    with pytest.raises(DownstreamError) as caught:
        caller(session, DATAVERSE, clock).send("GET", "https://org.example/x")
    assert len(session.sent) == 2  # 400 s fits the 600 s deadline once, not twice
    assert clock.now == 400.0
    assert "after 2 attempt(s)" in str(caught.value)


# -- broken connections -------------------------------------------------------------------------------------


def test_a_post_whose_connection_broke_is_not_sent_again() -> None:
    session = FakeSession(requests.ConnectionError("reset by peer"), 200)
    with pytest.raises(DownstreamError) as caught:
        caller(session, DATAVERSE).send("POST", "https://org.example/accounts", json={})
    assert len(session.sent) == 1
    assert caught.value.outcome_unknown is True
    assert caught.value.retryable is False
    assert "unknown" in str(caught.value)


def test_a_post_that_never_connected_is_sent_again() -> None:
    session = FakeSession(requests.ConnectTimeout("no route"), 200)
    assert caller(session, DATAVERSE).send("POST", "https://org.example/x", json={}).status_code == 200
    assert len(session.sent) == 2


def test_a_post_the_caller_declares_idempotent_is_sent_again() -> None:
    session = FakeSession(requests.ConnectionError("reset"), 200)
    http = caller(session, DATAVERSE)
    assert http.send("POST", "https://org.example/x", json={}, idempotent=True).status_code == 200


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []
        self.script: list[tuple[int, dict[str, str]] | None] = []  # None: drop the connection unanswered

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dropped connection is what the test asked for


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(self.command)
        step = self.server.script.pop(0) if len(self.server.script) > 1 else self.server.script[0]
        if step is None:
            self.close_connection = True
            self.connection.shutdown(2)  # the request arrived; no answer comes back
            return
        status, headers = step
        self.send_response(status)
        for name, value in {**headers, "Content-Length": "2"}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def test_over_the_wire_a_dropped_post_is_sent_once_and_a_dropped_get_is_retried(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    server.script = [None]
    policy = replace(DATAVERSE, attempts=3)
    with pytest.raises(DownstreamError) as caught:
        caller(requests.Session(), policy).send("POST", url, json={"a": 1})
    assert caught.value.outcome_unknown
    assert server.seen == ["POST"]
    server.seen.clear()
    with pytest.raises(DownstreamError):
        caller(requests.Session(), policy).send("GET", url)
    assert server.seen == ["GET", "GET", "GET"]


def test_over_the_wire_retry_after_is_honoured(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    server.script = [(429, {"Retry-After": "3"}), (200, {})]
    clock = Clock()
    assert caller(requests.Session(), SOURCE_API, clock).send("GET", url).status_code == 200
    assert clock.sleeps == [3.0]
    assert server.seen == ["GET", "GET"]


# -- what a failure shows -----------------------------------------------------------------------------------

PLANTED_URL = "https://jane:PA55WORD@hooks.example.test:8443/services/T0/B0/PATHPART?sig=S3CR3T&x=1"


@pytest.mark.parametrize(
    "outcome", [400, 503, requests.ConnectionError(f"cannot reach {PLANTED_URL}"), requests.ReadTimeout(PLANTED_URL)]
)
def test_a_failure_names_scheme_and_host_only(outcome: Outcome) -> None:
    session = FakeSession(outcome)
    with pytest.raises(DownstreamError) as caught:
        caller(session, NOTIFY).send("POST", PLANTED_URL, json={})
    error = caught.value
    shown = str(error) + repr(error) + "".join(traceback.format_exception(error))
    for secret in ("S3CR3T", "PA55WORD", "PATHPART", "sig=", "jane"):
        assert secret not in shown
    assert error.target == "https://hooks.example.test:8443"
    assert "notification channel at https://hooks.example.test:8443" in str(error)
    assert "Check:" in str(error)


def test_origin_never_shows_more_than_scheme_host_and_port() -> None:
    assert origin("https://a.example/p?q=1") == "https://a.example"
    assert origin("http://u:p@[::1]:8080/x") == "http://[::1]:8080"
    assert origin("https://a.example:notaport/x") == "an unparseable URL"


def test_a_forward_names_the_host_only_and_signs_each_attempt() -> None:
    session = FakeSession(503, 200)
    stamps = iter(range(10))
    done = forward_event(
        "https://receiver.example/hook?code=SECRET",
        b"{}",
        lambda: {"X-Stamp": str(next(stamps))},
        caller=caller(session, FORWARD),
    )
    assert done == "forwarded to https://receiver.example (200)"
    assert [kwargs["headers"]["X-Stamp"] for _, _, kwargs in session.sent] == ["0", "1"]


def test_a_refused_forward_says_the_queue_retries() -> None:
    session = FakeSession(400)
    with pytest.raises(DownstreamError, match="queue retries") as caught:
        forward_event("https://receiver.example/h?code=SECRET", b"{}", dict, caller=caller(session, FORWARD))
    assert len(session.sent) == 1
    assert "SECRET" not in str(caught.value)


def test_a_notifier_channel_that_refuses_is_sent_once_and_reported_without_raising() -> None:
    session = FakeSession(400)
    notifier = Notifier([Channel("ops", "json", "hook")], lambda _: "https://j.example/h?sig=SECRET",
                        session=session, sleep=lambda _: None)  # type: ignore[arg-type]  # fmt: skip
    assert notifier._deliver(notifier.channels[0], {}) == "HTTP 400"
    assert len(session.sent) == 1


def test_graph_reads_with_the_http_timeout_setting() -> None:
    class Credential:
        def get_token(self, scope: str) -> Any:
            return type("T", (), {"token": "graph-token"})()

    session = FakeSession(200)
    reader = GraphReader("https://graph.example", Credential(), timeout_s=7, session=session)  # type: ignore[arg-type]
    reader.application("app")
    assert session.sent[0][2]["timeout"] == (7, 7)
    assert GRAPH.with_timeout(45).timeout == (GRAPH.connect_timeout_s, 45)


# -- the Dataverse client on the layer ----------------------------------------------------------------------


class Tokens:
    def __init__(self) -> None:
        self.issued = 0

    def token_for_invocation(self, *, force_refresh: bool = False) -> Any:
        self.issued += 1
        return type("Token", (), {"value": f"token-{self.issued}"})()


class CountingGovernor(ThrottleGovernor):
    def __init__(self, clock: Clock) -> None:
        super().__init__(8, clock=clock, sleep=clock.sleep)
        self.slots = 0
        self.pauses: list[float] = []

    def slot(self) -> Any:
        self.slots += 1
        return super().slot()

    def throttled(self, retry_after_s: float) -> None:
        self.pauses.append(retry_after_s)
        super().throttled(retry_after_s)


def dataverse(session: FakeSession, policy: RetryPolicy = DATAVERSE) -> tuple[DataverseClient, Tokens, Clock]:
    tokens, clock = Tokens(), Clock()
    client = DataverseClient(
        "https://org.example",
        tokens,
        session=session,  # type: ignore[arg-type]
        options=ClientOptions(policy=policy),
        governor=CountingGovernor(clock),
        sleep=clock.sleep,
    )
    return client, tokens, clock


def test_a_401_refreshes_the_token_once_and_resends_at_once() -> None:
    session = FakeSession(401, 200)
    client, tokens, clock = dataverse(session)
    client.request("GET", "WhoAmI")
    assert tokens.issued == 2
    assert [kwargs["headers"]["Authorization"] for _, _, kwargs in session.sent] == [
        "Bearer token-1",
        "Bearer token-2",
    ]
    assert clock.sleeps == []
    assert client.requests_sent == 2


def test_a_second_401_is_raised_after_one_refresh() -> None:
    session = FakeSession(401)
    client, tokens, _ = dataverse(session)
    with pytest.raises(DataverseError) as caught:
        client.whoami()
    assert caught.value.status == 401
    assert (tokens.issued, len(session.sent)) == (2, 2)


def test_the_probe_policy_tries_once_but_still_refreshes_on_401() -> None:
    session = FakeSession(401, 503)
    client, tokens, _ = dataverse(session, PROBE)
    assert client.request("GET", "WhoAmI", raise_for_status=False).status_code == 503
    assert (tokens.issued, len(session.sent)) == (2, 2)


def test_every_attempt_holds_a_governor_slot() -> None:
    session = FakeSession(503, 502, 200)
    client, _, _ = dataverse(session)
    client.request("GET", "WhoAmI")
    assert isinstance(client.governor, CountingGovernor)
    assert client.governor.slots == 3 == client.requests_sent


def test_a_429_pauses_through_the_governor_and_is_not_slept_twice() -> None:
    session = FakeSession((429, {"Retry-After": "2"}), 200)
    client, _, clock = dataverse(session)
    client.request("GET", "WhoAmI")
    assert isinstance(client.governor, CountingGovernor)
    assert client.governor.pauses == [2.0]
    assert client.governor.throttles == 1
    assert len(clock.sleeps) == 1  # the governor's pause, before the second slot
    assert 2.0 <= clock.sleeps[0] <= 2.0 * 1.2


def test_a_503_with_retry_after_is_slept_by_the_client() -> None:
    session = FakeSession((503, {"Retry-After": "3"}), 200)
    client, _, clock = dataverse(session)
    client.request("GET", "WhoAmI")
    assert client.governor.throttles == 0
    assert len(clock.sleeps) == 1
    assert 3.0 <= clock.sleeps[0] <= 3.0 * 1.1


def test_still_throttled_at_the_end_is_a_throttled_error() -> None:
    session = FakeSession((429, {"Retry-After": "1"}))
    client, _, _ = dataverse(session)
    with pytest.raises(ThrottledError) as caught:
        client.whoami()
    assert len(session.sent) == DATAVERSE.attempts
    assert caught.value.retry_after_s == 1.0


def test_the_dop_hint_caps_the_governor() -> None:
    client, _, _ = dataverse(FakeSession((200, {"x-ms-dop-hint": "3"})))
    client.request("GET", "WhoAmI")
    assert client.governor.ceiling == 3


def test_dataverse_connection_failures_keep_their_codes() -> None:
    client, _, _ = dataverse(FakeSession(requests.ConnectionError("reset")))
    with pytest.raises(DataverseError) as broken:
        client.create("accounts", {"name": "maybe"})
    assert (broken.value.code, len(client.session.sent)) == ("OutcomeUnknown", 1)  # type: ignore[attr-defined]
    with pytest.raises(DataverseError) as unreachable:
        client.whoami()
    assert unreachable.value.code == "ConnectionError"
    assert isinstance(unreachable.value.__cause__, requests.ConnectionError)
