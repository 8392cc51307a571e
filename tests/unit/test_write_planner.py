"""The write planner against a scripted transport: isolation, SQL-timeout splitting, throttling, key exclusivity."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.governor import ThrottleGovernor
from shared.dataverse.planner import WritePlanner

pytestmark = pytest.mark.unit

ORG = "https://org.example"
ACCOUNT = "Microsoft.Dynamics.CRM.account"


def response(
    status: int, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.headers = CaseInsensitiveDict(headers or {})
    if raw is not None:
        r._content = raw
    else:
        r._content = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            r.headers.setdefault("Content-Type", "application/json")
    return r


class ScriptedSession:
    """Answers each request with ``handler(method, url, body_json, data)``; records every call."""

    def __init__(self, handler: Callable[..., requests.Response]) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def request(
        self, method: str, url: str, *, json: Any = None, data: bytes | None = None, **_: Any
    ) -> requests.Response:
        with self.lock:
            self.calls.append((method, url))
        return self.handler(method, url, json, data)


def planner_for(
    handler: Callable[..., requests.Response], *, concurrency: int = 2
) -> tuple[WritePlanner, ScriptedSession, list[float]]:
    session = ScriptedSession(handler)
    sleeps: list[float] = []
    now = [0.0]

    def fake_sleep(seconds: float) -> None:  # time passes only when the governor sleeps
        sleeps.append(seconds)
        now[0] += seconds

    governor = ThrottleGovernor(concurrency, sleep=fake_sleep, clock=lambda: now[0])
    tokens = SimpleNamespace(token_for_invocation=lambda **_: SimpleNamespace(value="t"))
    client = DataverseClient(
        ORG, tokens, session=session, options=ClientOptions(max_concurrency=concurrency), governor=governor
    )  # type: ignore[arg-type]
    return WritePlanner(client), session, sleeps


def batch_reply(statuses: list[int]) -> requests.Response:
    boundary = "batchresponse_x"
    parts = []
    for status in statuses:
        body = '{"error":{"code":"0x80044331","message":"too long"}}' if status >= 400 else ""
        head = f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        parts.append(f"{head}HTTP/1.1 {status} X\r\n\r\n{body}\r\n")
    return response(
        200,
        raw=("".join(parts) + f"--{boundary}--\r\n").encode(),
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )


def records(n: int) -> list[dict[str, Any]]:
    return [{"accountnumber": f"A{i}", "name": "x" * 200 if i == 3 else f"n{i}"} for i in range(n)]


def test_failed_bulk_chunk_is_isolated_through_a_continue_on_error_batch() -> None:
    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        if url.endswith("UpsertMultiple"):
            return response(400, {"error": {"code": "0x80044331", "message": "too long"}})
        assert url.endswith("$batch")
        return batch_reply([400 if b"x" * 200 in part else 204 for part in data.split(b"--batch_")[1:-1]])  # type: ignore[union-attr]

    planner, session, _ = planner_for(handler)
    run = planner.write(
        "account", "accounts", records(6), "upsert", key=("accountnumber",), strategy="bulk", batch_size=10
    )
    results = sorted(run, key=lambda r: r.index)
    assert [(r.index, r.status, r.code) for r in results if not r.ok] == [(3, "failed", "0x80044331")]
    assert run.summary.ok == 5
    assert run.summary.isolated_chunks == 1
    assert [u.rsplit("/", 1)[1] for _, u in session.calls] == ["Microsoft.Dynamics.CRM.UpsertMultiple", "$batch"]


def test_bulk_targets_carry_the_type_and_no_repeated_key_column() -> None:
    seen: list[dict[str, Any]] = []

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        seen.extend(body["Targets"])
        return response(204)

    planner, _, _ = planner_for(handler)
    run = planner.write(
        "account",
        "accounts",
        [{"accountnumber": "O'B", "name": "n"}, {"accountnumber": "O'B", "name": "m"}],
        "upsert",
        key=("accountnumber",),
        strategy="bulk",
    )
    statuses = sorted((r.index, r.status) for r in run)
    assert statuses == [(0, "duplicate"), (1, "ok")]
    assert seen == [{"@odata.type": ACCOUNT, "@odata.id": "accounts(accountnumber='O''B')", "name": "m"}]


def test_sql_timeout_halves_the_chunk() -> None:
    sizes: list[int] = []

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        sizes.append(len(body["Targets"]))
        if len(body["Targets"]) > 4:
            return response(500, {"error": {"code": "0x80044151", "message": "Sql error: 'SQL timeout expired.'"}})
        return response(204)

    planner, _, _ = planner_for(handler)
    run = planner.write(
        "account",
        "accounts",
        [{"accountnumber": f"A{i}", "name": "n"} for i in range(8)],
        "upsert",
        key=("accountnumber",),
        strategy="bulk",
        batch_size=8,
    )
    assert all(r.ok for r in run)
    assert run.summary.ok == 8
    assert sizes[0] == 8
    assert sorted(sizes[1:]) == [4, 4]


def test_throttling_pauses_for_retry_after_and_halves_concurrency() -> None:
    answers = iter(
        [response(429, {"error": {"code": "0x80072321", "message": "x"}}, {"Retry-After": "7"}), response(204)]
    )

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        return next(answers)

    planner, session, sleeps = planner_for(handler, concurrency=4)
    run = planner.write(
        "account", "accounts", [{"accountnumber": "A", "name": "n"}], "upsert", key=("accountnumber",), strategy="bulk"
    )
    assert [r.status for r in run] == ["ok"]
    governor = planner.client.governor
    assert governor.throttles == 1
    assert governor.limit == 3  # halved from 4 to 2, then the retry's success added a slot back
    assert 7.0 <= governor.paused_until <= 7.0 * 1.2  # Retry-After plus at most 20 % jitter
    assert sleeps
    assert 7.0 <= sum(sleeps) <= 7.0 * 1.2
    assert len(session.calls) == 2


def test_a_throttle_halves_concurrency_and_successes_win_it_back_one_slot_each() -> None:
    governor = ThrottleGovernor(8, sleep=lambda _: None, clock=lambda: 0.0)
    governor.throttled(2.0)
    governor.throttled(2.0)
    assert governor.limit == 2
    limits = []
    for _ in range(8):
        governor.succeeded()
        limits.append(governor.limit)
    assert limits == [3, 4, 5, 6, 7, 8, 8, 8]  # never above the ceiling (max_concurrency, dop hint)
    governor.apply_dop_hint(5)
    assert governor.limit == 5


def test_two_chunks_with_the_same_key_are_never_in_flight_together() -> None:
    in_flight: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        keys = {t["@odata.id"] for t in body["Targets"]}
        with lock:
            overlaps.extend(in_flight & keys)
            in_flight.update(keys)
        time.sleep(0.05)  # long enough for a second chunk to start if the planner let it
        with lock:
            in_flight.difference_update(keys)
        return response(204)

    planner, _, _ = planner_for(handler, concurrency=4)
    rows = [{"accountnumber": k, "name": "n"} for k in ["A", "B", "A", "C", "D", "E", "B", "F"]]
    run = planner.write("account", "accounts", rows, "upsert", key=("accountnumber",), strategy="bulk", batch_size=2)
    assert all(r.ok for r in run)
    assert overlaps == []


def test_a_primary_key_is_addressed_by_its_bare_guid_in_single_and_batch_writes() -> None:
    record_id = "0e6a24e1-0000-0000-0000-0000000000a1"

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        if url.endswith("$batch"):
            assert data is not None
            assert f"PATCH accounts({record_id}) HTTP/1.1".encode() in data
            return response(400, {"error": {"code": "0x0", "message": "stop"}})
        return response(204)

    planner, session, _ = planner_for(handler)
    rows = [{"accountid": record_id, "name": "By id"}]
    [single] = planner.write("account", "accounts", rows, key=("accountid",), strategy="single")
    assert single.ok
    list(planner.write("account", "accounts", rows, key=("accountid",), strategy="batch"))
    assert (session.calls[0][0], session.calls[0][1].rsplit("/", 1)[-1]) == ("PATCH", f"accounts({record_id})")


def test_slash_keys_are_found_by_one_query_and_written_by_the_ids_the_response_carries() -> None:
    activity = "0e6a24e1-0000-0000-0000-0000000000b2"
    sent: list[bytes] = []

    def handler(method: str, url: str, body: Any, data: bytes | None) -> requests.Response:
        if method == "GET":  # a task's primary key is activityid, not taskid
            return response(200, {"value": [{"@odata.etag": 'W/"1"', "subject": "T/1", "activityid": activity}]})
        assert data is not None
        sent.append(data)
        return batch_reply([204, 204])

    planner, session, _ = planner_for(handler)
    rows = [{"subject": "T/1", "description": "x"}, {"subject": "T/2", "description": "y"}]
    results = list(planner.write("task", "tasks", rows, key=("subject",)))
    assert [r.ok for r in results] == [True, True]
    assert [method for method, _ in session.calls] == ["GET", "POST"]  # one query, one $batch
    assert f"PATCH tasks({activity}) HTTP/1.1".encode() in sent[0]  # the one that exists, by id
    assert b"POST tasks HTTP/1.1" in sent[0]  # the one that does not, created with its key in the body
    assert b'"subject":"T/2"' in sent[0]
    assert b"%2F" not in sent[0]
