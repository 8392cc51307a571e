"""Acceptance 1 of the local host: a fixture app exercised through the host, effects read from Azurite."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.e2e

FIXTURE_APP = Path(__file__).parent / "fixture_app"
ADMIN_RUN_WAIT_S = 45  # an admin run once missed the default wait in CI (cause not found): wait longer, show the log


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    state = tmp_path_factory.mktemp("host")
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", state, "host",
        "--host", "--app-dir", str(FIXTURE_APP), "--host-port", "0", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    yield process
    process.stop()


def queue_messages(stack: DevstackProcess, queue: str, *, at_least: int = 1, timeout_s: float = 15) -> list[str]:
    """Read (and remove) messages from an Azurite queue until at least ``at_least`` arrived."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    client = QueueClient.from_connection_string(
        stack.env["AzureWebJobsStorage"], queue, message_decode_policy=TextBase64DecodePolicy()
    )
    found: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ResourceNotFoundError):  # the function has not created the queue yet
            for message in client.receive_messages(max_messages=32, visibility_timeout=60):
                found.append(str(message.content))
                client.delete_message(message)
        if len(found) >= at_least:
            break
        time.sleep(0.2)
    return found


def keys(stack: DevstackProcess) -> dict[str, Any]:
    return dict(json.loads((stack.directory / "host-keys.json").read_text()))


def url(stack: DevstackProcess, path: str) -> str:
    return f"{stack.env['FUNCTIONS_BASE_URL']}{path}"


def test_routes_parameters_and_auth_levels(stack) -> None:
    host_key, k = stack.env["FUNCTIONS_HOST_KEY"], keys(stack)
    r = requests.get(
        url(stack, "/api/items/42/blue"), params={"x": "1"}, headers={"x-functions-key": host_key}, timeout=10
    )
    assert r.status_code == 200
    assert r.headers["X-Fixture"] == "yes"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"id": "42", "label": "blue", "x": "1"}
    own = k["functions"]["get_item"]["default"]
    assert requests.get(url(stack, f"/api/items/7?code={own}"), timeout=10).json()["label"] is None
    assert requests.get(url(stack, "/api/items/7"), timeout=10).status_code == 401
    assert requests.get(url(stack, "/api/items/7"), headers={"x-functions-key": "wrong"}, timeout=10).status_code == 401
    other = k["functions"]["enqueue"]["default"]  # another function's key does not open this one
    assert requests.get(url(stack, f"/api/items/7?code={other}"), timeout=10).status_code == 401
    assert (
        requests.get(url(stack, "/api/items/abc"), headers={"x-functions-key": host_key}, timeout=10).status_code == 404
    )
    public = requests.post(url(stack, "/api/public"), data=b"echo", timeout=10)
    assert public.status_code == 201
    assert public.content == b"echo"
    assert public.headers["content-type"] == "text/plain; charset=utf-8"
    assert (
        requests.post(url(stack, "/api/ops/secret"), headers={"x-functions-key": host_key}, timeout=10).status_code
        == 401
    )
    assert (
        requests.post(url(stack, "/api/ops/secret"), headers={"x-functions-key": k["masterKey"]}, timeout=10).text
        == "admin ok"
    )


def test_timers_fire_on_schedule_and_on_startup(stack) -> None:
    ticks = [json.loads(m) for m in queue_messages(stack, "ticks", at_least=2)]
    assert len(ticks) >= 2
    assert all(t["next"] for t in ticks)
    startup = [json.loads(m) for m in queue_messages(stack, "nightly", at_least=1)]
    assert startup[0] == {"ran": True, "past_due": False}


def test_queue_output_trigger_retries_and_poison(stack) -> None:
    headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
    tag = uuid.uuid4().hex[:6]
    for body in (f"ok-{tag}", "flaky", "fail"):
        assert requests.post(url(stack, "/api/enqueue"), data=body, headers=headers, timeout=10).status_code == 202
    done = {
        json.loads(m)["body"]: json.loads(m)["dequeue_count"]
        for m in queue_messages(stack, "done", at_least=2, timeout_s=30)
    }
    assert done == {f"ok-{tag}": 1, "flaky": 3}  # flaky succeeded on its third delivery
    poison = queue_messages(stack, "work-poison", at_least=1, timeout_s=30)
    assert poison == ["fail"]  # after maxDequeueCount (3) attempts


def test_event_grid_validation_and_delivery(stack) -> None:
    endpoint = url(stack, "/runtime/webhooks/eventgrid")
    code = keys(stack)["systemKeys"]["eventgrid_extension"]
    validation = requests.post(
        endpoint,
        params={"functionName": "on_event", "code": code},
        headers={"aeg-event-type": "SubscriptionValidation"},
        json=[
            {
                "id": "1",
                "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "abc-123"},
            }
        ],
        timeout=10,
    )
    assert validation.json() == {"validationResponse": "abc-123"}
    assert requests.post(endpoint, params={"functionName": "on_event"}, json=[], timeout=10).status_code == 401
    event = {
        "id": str(uuid.uuid4()),
        "eventType": "Microsoft.KeyVault.SecretNearExpiry",
        "subject": "dataverse-client-secret",
        "eventTime": "2026-11-21T10:00:00Z",
        "data": {"ObjectName": "dataverse-client-secret", "EXP": 1795257731},
        "dataVersion": "1",
        "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/z",
    }
    delivered = requests.post(
        endpoint,
        params={"functionName": "on_event", "code": code},
        headers={"aeg-event-type": "Notification"},
        json=[event],
        timeout=10,
    )
    assert delivered.status_code == 202
    (message,) = [json.loads(m) for m in queue_messages(stack, "events")]
    assert message == {
        "type": "Microsoft.KeyVault.SecretNearExpiry",
        "subject": "dataverse-client-secret",
        "data": event["data"],
    }


def test_admin_endpoint_runs_a_timer_now(stack) -> None:
    queue_messages(stack, "nightly", at_least=0, timeout_s=0.5)  # drain the start-up run
    admin = url(stack, "/admin/functions/nightly")
    assert requests.post(admin, json={"input": ""}, timeout=10).status_code == 401
    assert (
        requests.post(
            admin, json={"input": ""}, headers={"x-functions-key": keys(stack)["masterKey"]}, timeout=10
        ).status_code
        == 202
    )
    ran = [json.loads(m) for m in queue_messages(stack, "nightly", timeout_s=ADMIN_RUN_WAIT_S)]
    lines = [line for line in stack.stdout_text().splitlines() if "nightly" in line][-10:]
    assert ran == [{"ran": True, "past_due": False}], lines  # the host's log of the run, should it be missing


def test_function_timeout_is_enforced(stack) -> None:
    started = time.monotonic()
    r = requests.get(url(stack, "/api/slow"), headers={"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}, timeout=20)
    assert r.status_code == 500
    assert time.monotonic() - started < 5  # functionTimeout 3 s, not the function's 6 s
    log = stack.log_path.read_text() if stack.log_path.exists() else ""
    assert (
        "Executed 'Functions.get_item' (Succeeded" in stack.stdout_text()
        or "Executed 'Functions.get_item' (Succeeded" in log
    )


def test_a_trailing_newline_names_no_function_and_no_route_value(stack) -> None:
    """Found by tests/fuzz/test_host_requests.py: a pattern's `$` also matches before a final newline, so
    `items/7%0A` reached get_item with id 7 and `/admin/functions/nightly%0A` would have run nightly."""
    master = {"x-functions-key": keys(stack)["masterKey"]}
    assert requests.get(url(stack, "/api/items/7%0A"), headers=master, timeout=10).status_code == 404
    assert (
        requests.post(url(stack, "/admin/functions/nightly%0A"), json={}, headers=master, timeout=10).status_code == 404
    )
