"""Service protection: the three 429s with Dataverse's documented bodies, Retry-After and informational headers."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.dataverse_api import DataverseApi, api_for

pytestmark = pytest.mark.integration

ACCOUNT = "Microsoft.Dynamics.CRM.account"
TIME_REMAINING = re.compile(r"^\d{1,3}(,\d{3})*\.\d{2}$")


def session_for(stack, app_env, client_id: str, secret: str) -> DataverseApi:
    app_env(stack, DATAVERSE_CLIENT_ID=client_id, DATAVERSE_CLIENT_SECRET_NAME=secret)
    return api_for(stack)


def bulk(call) -> requests.Response:
    return call(
        "POST",
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": ACCOUNT, "name": "b"}]},
    )


def test_request_count_limit(limits_devstack, app_env) -> None:
    call = session_for(limits_devstack, app_env, "2b4d6f8a-0000-4000-8000-000000000001", "count-secret")
    remaining = [int(call("GET", "WhoAmI").headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) for _ in range(30)]
    assert remaining == list(range(29, -1, -1))
    throttled = call("GET", "WhoAmI")
    assert throttled.status_code == 429
    assert throttled.json()["error"] == {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 30 over time window of 300 seconds.",
    }
    assert 1 <= int(throttled.headers["Retry-After"]) <= 15  # 300 s at time_scale 0.05


def test_execution_time_limit(limits_devstack, app_env) -> None:
    call = session_for(limits_devstack, app_env, "2b4d6f8a-0000-4000-8000-000000000002", "time-secret")
    statuses = [bulk(call).status_code for _ in range(3)]  # 3 x 4,100 ms of execution >= 10,000 ms
    assert statuses == [200, 200, 200]
    throttled = bulk(call)
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "0x80072321"
    assert (
        "exceeded limit of 10,000  milliseconds over time window of 300 seconds" in throttled.json()["error"]["message"]
    )
    assert int(throttled.headers["Retry-After"]) >= 1
    stats = call.stats()
    assert stats["counters"]["throttled 0x80072321"] >= 1


def test_concurrency_limit_fails_at_once(limits_devstack, app_env) -> None:
    call = session_for(limits_devstack, app_env, "2b4d6f8a-0000-4000-8000-000000000003", "conc-secret")
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda _: bulk(call), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "six concurrent 200 ms requests must exceed a concurrency limit of 3"
    assert {r.json()["error"]["code"] for r in refused} == {"0x80072326"}
    assert refused[0].json()["error"]["message"] == "Number of concurrent requests exceeded the limit of 3."
    # Refused at once: before any admitted request finishes its 200 ms of server time (no fixed margin: on a
    # busy machine every answer is late by the same scheduling delays).
    admitted = [r.elapsed.total_seconds() for r in responses if r.status_code == 200]
    assert max(r.elapsed.total_seconds() for r in refused) < min(admitted)


def test_informational_headers_and_affinity(devstack, app_env) -> None:
    call = session_for(
        devstack, app_env, devstack.env["DATAVERSE_CLIENT_ID"], devstack.env["DATAVERSE_CLIENT_SECRET_NAME"]
    )
    r = call("GET", "WhoAmI")
    assert TIME_REMAINING.match(r.headers["x-ms-ratelimit-time-remaining-xrm-requests"])
    assert "," in r.headers["x-ms-ratelimit-time-remaining-xrm-requests"]  # 1,2xx.xx: a thousands separator
    assert int(r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) < 6000
    assert r.headers["x-ms-dop-hint"] == "4"
    assert "ARRAffinity=" in r.headers["set-cookie"]
