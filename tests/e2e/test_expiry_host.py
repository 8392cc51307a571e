"""Credential expiry through the local host: Key Vault's Event Grid event and the timer's sweep for the
same credential and threshold give one alert; the credentials API lists, acknowledges and snoozes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from tests.devstack_process import DevstackProcess
from tests.integration.test_expiry import received

pytestmark = pytest.mark.e2e

ERP_KEY = "kv-secret:dvbridge-dev:erp-api-key"  # the default world's secret expiring in 12 days
EVENT_WAIT_S = 30


def keys(stack: DevstackProcess) -> dict[str, Any]:
    return dict(json.loads((stack.directory / "host-keys.json").read_text()))


def api(stack: DevstackProcess, method: str, path: str, function: str, body: Any = None) -> requests.Response:
    key = keys(stack)["functions"][function]["default"]
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/{path}"
    return requests.request(method, url, json=body, headers={"x-functions-key": key}, timeout=30)


def alerts_for(stack: DevstackProcess, credential: str) -> list[dict[str, Any]]:
    return [a for a in received(stack) if a["credential"]["id"] == credential]


def test_an_event_and_a_sweep_for_the_same_threshold_send_one_alert(hooks_stack: DevstackProcess) -> None:
    stack = hooks_stack
    deadline = time.monotonic() + EVENT_WAIT_S
    while not alerts_for(stack, ERP_KEY) and time.monotonic() < deadline:
        time.sleep(0.5)  # Key Vault's SecretNearExpiry reaches the host's Event Grid endpoint after start-up
    from_event = alerts_for(stack, ERP_KEY)
    assert [(a["kind"], a["level"]) for a in from_event] == [("threshold", "14d")]
    assert "expiry_event" in stack.stdout_text()

    master = {"x-functions-key": keys(stack)["masterKey"]}
    run = requests.post(f"{stack.env['FUNCTIONS_BASE_URL']}/admin/functions/expiry_sweep", json={}, headers=master,
                        timeout=30)  # fmt: skip
    assert run.status_code == 202
    deadline = time.monotonic() + EVENT_WAIT_S
    while "Executed 'Functions.expiry_sweep' (Succeeded" not in stack.stdout_text() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "Executed 'Functions.expiry_sweep' (Succeeded" in stack.stdout_text()
    assert alerts_for(stack, ERP_KEY) == from_event  # the sweep saw the threshold already alerted
    assert len([a for a in received(stack, "teams") if "erp-api-key" in json.dumps(a)]) == 1

    listed = api(stack, "GET", "credentials", "credentials_list")
    assert listed.status_code == 200
    rows = {row["id"]: row for row in listed.json()["credentials"]}
    assert rows[ERP_KEY]["state"] == "14d"
    assert rows[ERP_KEY]["last_alert"] == "14d"
    assert 11.9 < rows[ERP_KEY]["days_left"] <= 12.0
    assert rows["kv-secret:dvbridge-dev:dataverse-client-secret"]["state"] == "ok"

    acked = api(stack, "POST", f"credentials/{ERP_KEY}/ack", "credentials_ack", {"by": "ops@contoso.com", "days": 3})
    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "ops@contoso.com"
    snoozed = api(
        stack, "POST", f"credentials/{ERP_KEY}/snooze", "credentials_snooze", {"until": "2030-01-01T00:00:00Z"}
    )
    assert snoozed.status_code == 200
    assert snoozed.json()["snoozed_until"].startswith("2030-01-01")
    assert api(stack, "POST", f"credentials/{ERP_KEY}/ack", "credentials_ack", {"days": 3}).status_code == 400
    assert api(stack, "POST", f"credentials/{ERP_KEY}/snooze", "credentials_snooze", {}).status_code == 400
    missing = api(stack, "POST", "credentials/kv-secret:nope:nope/ack", "credentials_ack", {"by": "me"})
    assert missing.status_code == 404
    assert "GET /api/credentials" in missing.json()["error"]
    bad = api(stack, "POST", f"credentials/{ERP_KEY}/snooze", "credentials_snooze", {"until": "next tuesday"})
    assert bad.status_code == 400
    assert "until" in bad.json()["error"]
    listed = {row["id"]: row for row in api(stack, "GET", "credentials", "credentials_list").json()["credentials"]}
    assert listed[ERP_KEY]["acknowledged_by"] == "ops@contoso.com"
