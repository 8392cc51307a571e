"""Injected faults through the control API: 429 codes, 5xx, resets, slow responses, SQL timeouts, token age."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.dataverse_api import DataverseApi, api_for

pytestmark = pytest.mark.integration

ACCOUNT = "Microsoft.Dynamics.CRM.account"


@pytest.fixture
def dv(devstack, app_env) -> Iterator[DataverseApi]:
    app_env(devstack)
    api = api_for(devstack)
    yield api
    api.control({"faults": [], "max_token_age_s": None})


def test_count_based_faults_fire_exactly_n_times(dv) -> None:
    dv.control({"faults": [{"kind": "503", "route": "GET WhoAmI", "count": 2}]})
    assert [dv("GET", "WhoAmI").status_code for _ in range(3)] == [503, 503, 200]
    dv.control(
        {"faults": [{"kind": "429", "code": "0x80072321", "route": "POST accounts", "count": 1, "retry_after_s": 3}]}
    )
    throttled = dv("POST", "accounts", json={"name": "x"})
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "3"
    assert throttled.json()["error"]["code"] == "0x80072321"
    assert dv("GET", "WhoAmI").status_code == 200  # other routes unaffected


def test_rate_based_faults_are_repeatable(dv) -> None:
    dv.control({"faults": [{"kind": "500", "route": "GET WhoAmI", "rate": 0.5}]})
    first = [dv("GET", "WhoAmI").status_code for _ in range(20)]
    dv.control({"faults": [{"kind": "500", "route": "GET WhoAmI", "rate": 0.5}]})
    assert 3 <= first.count(500) <= 17


def test_connection_reset_and_slow_response(dv) -> None:
    dv.control({"faults": [{"kind": "reset", "route": "GET WhoAmI", "count": 1}]})
    # The connection breaks mid-response ("Connection broken: IncompleteRead"): what a client sees of a reset.
    with pytest.raises((requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        dv("GET", "WhoAmI")
    assert dv("GET", "WhoAmI").status_code == 200
    dv.control({"faults": [{"kind": "slow", "route": "GET WhoAmI", "count": 1, "delay_ms": 400}]})
    started = time.monotonic()
    assert dv("GET", "WhoAmI").status_code == 200
    assert time.monotonic() - started >= 0.4


def test_sql_timeout_only_for_large_requests(dv) -> None:
    dv.control({"faults": [{"kind": "sql_timeout", "route": "POST accounts/", "rate": 1.0, "min_records": 10}]})
    small = [{"@odata.type": ACCOUNT, "name": "s"}] * 9
    large = [{"@odata.type": ACCOUNT, "name": "l"}] * 10
    assert dv("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": small}).status_code == 200
    refused = dv("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": large})
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "0x80044151"


def test_tokens_rejected_after_an_age(dv) -> None:
    time.sleep(1.1)
    dv.control({"max_token_age_s": 1})
    rejected = dv("GET", "WhoAmI")
    assert rejected.status_code == 401
    assert "authorization_uri=" in rejected.headers["WWW-Authenticate"]
