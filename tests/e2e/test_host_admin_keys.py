"""The local host's ``/admin/*`` APIs and authLevel-admin functions take the master key only, as in Azure
("APIs under the /admin/ path are only accessible with the master key"): a host key, a function key, the
Event Grid system key, a wrong key or none is refused with 401, and the function does not run."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.e2e

FIXTURE_APP = ROOT / "tests" / "e2e" / "fixture_app"
ADMIN_RUN = "Executing 'Functions.nightly' (Reason='This function was programmatically called via the host APIs."
ADMIN_HTTP_RUN = "Executing 'Functions.admin_only'"
RUN_WAIT_S = 15
SETTLE_S = 1.0  # long enough for a wrongly accepted run (scheduled earlier) to have logged its start


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("admin-keys"), "admin-keys",
        "--host", "--app-dir", str(FIXTURE_APP), "--host-port", "0", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    yield process
    process.stop()


def keys(stack: DevstackProcess) -> dict[str, Any]:
    return dict(json.loads((stack.directory / "host-keys.json").read_text()))


def refused_credentials(stack: DevstackProcess) -> dict[str, dict[str, Any]]:
    """Each way of presenting a key that is not the master key: requests' keyword arguments."""
    k = keys(stack)
    host_key, wrong = k["functionKeys"]["default"], "x" * len(k["masterKey"])
    return {
        "no key": {},
        "host key": {"headers": {"x-functions-key": host_key}},
        "host key as code": {"params": {"code": host_key}},
        "the function's own key": {"headers": {"x-functions-key": k["functions"]["nightly"]["default"]}},
        "an HTTP function's key": {"headers": {"x-functions-key": k["functions"]["get_item"]["default"]}},
        "the admin function's key": {"headers": {"x-functions-key": k["functions"]["admin_only"]["default"]}},
        "event grid system key": {"headers": {"x-functions-key": k["systemKeys"]["eventgrid_extension"]}},
        "wrong key": {"headers": {"x-functions-key": wrong}},
        "master key with a suffix": {"headers": {"x-functions-key": k["masterKey"] + "x"}},
        "non-ascii key": {"headers": {"x-functions-key": "clé".encode("latin-1")}},
        "empty key": {"headers": {"x-functions-key": ""}, "params": {"code": ""}},
    }


def admin_url(stack: DevstackProcess, path: str) -> str:
    return f"{stack.env['FUNCTIONS_BASE_URL']}{path}"


def drain(stack: DevstackProcess, queue: str) -> list[str]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    client = QueueClient.from_connection_string(
        stack.env["AzureWebJobsStorage"], queue, message_decode_policy=TextBase64DecodePolicy()
    )
    found: list[str] = []
    with contextlib.suppress(ResourceNotFoundError):  # nothing written yet
        for message in client.receive_messages(max_messages=32, visibility_timeout=60):
            found.append(str(message.content))
            client.delete_message(message)
    return found


def wait_for(predicate: Any, timeout_s: float = RUN_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def test_admin_run_refuses_every_key_but_the_master_key(stack: DevstackProcess) -> None:
    assert wait_for(lambda: drain(stack, "nightly"))  # nightly runs on start-up: its message is not ours
    url = admin_url(stack, "/admin/functions/nightly")
    for variant, credentials in refused_credentials(stack).items():
        answer = requests.post(url, json={"input": ""}, timeout=10, **credentials)
        assert answer.status_code == 401, variant
    time.sleep(SETTLE_S)
    assert stack.stdout_text().count(ADMIN_RUN) == 0  # no invocation was started
    assert drain(stack, "nightly") == []  # and no effect

    master = keys(stack)["masterKey"]
    assert requests.post(url, json={"input": ""}, headers={"x-functions-key": master}, timeout=10).status_code == 202
    assert requests.post(url, json={"input": ""}, params={"code": master}, timeout=10).status_code == 202
    assert wait_for(lambda: stack.stdout_text().count(ADMIN_RUN) == 2)
    effects: list[str] = []

    def both_written() -> bool:
        effects.extend(drain(stack, "nightly"))
        return len(effects) >= 2

    assert wait_for(both_written)
    time.sleep(SETTLE_S)
    effects.extend(drain(stack, "nightly"))
    assert [json.loads(m) for m in effects] == [{"ran": True, "past_due": False}] * 2
    assert stack.stdout_text().count(ADMIN_RUN) == 2


def test_an_unknown_function_is_not_revealed_without_the_master_key(stack: DevstackProcess) -> None:
    url = admin_url(stack, "/admin/functions/no_such_function")
    host_key = stack.env["FUNCTIONS_HOST_KEY"]
    assert requests.post(url, json={}, headers={"x-functions-key": host_key}, timeout=10).status_code == 401
    assert (
        requests.post(url, json={}, headers={"x-functions-key": keys(stack)["masterKey"]}, timeout=10).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/host/status"),
        ("GET", "/admin/host/keys"),
        ("POST", "/admin/host/keys/_master"),
        ("GET", "/admin/functions/nightly"),
        ("DELETE", "/admin/functions/nightly/keys/default"),
        ("GET", "/admin"),
    ],
)
def test_every_other_admin_path_takes_the_master_key_only(stack: DevstackProcess, method: str, path: str) -> None:
    url = admin_url(stack, path)
    for variant, credentials in refused_credentials(stack).items():
        assert requests.request(method, url, timeout=10, **credentials).status_code == 401, variant
    master = {"x-functions-key": keys(stack)["masterKey"]}
    assert requests.request(method, url, headers=master, timeout=10).status_code == 404  # not emulated


def test_an_admin_level_function_takes_the_master_key_only(stack: DevstackProcess) -> None:
    url = admin_url(stack, "/api/ops/secret")
    before = stack.stdout_text().count(ADMIN_HTTP_RUN)
    for variant, credentials in refused_credentials(stack).items():
        assert requests.post(url, timeout=10, **credentials).status_code == 401, variant
    time.sleep(SETTLE_S)
    assert stack.stdout_text().count(ADMIN_HTTP_RUN) == before  # refused before the function was invoked

    master = keys(stack)["masterKey"]
    answer = requests.post(url, headers={"x-functions-key": master}, timeout=10)
    assert (answer.status_code, answer.text) == (200, "admin ok")
    assert requests.post(url, params={"code": master}, timeout=10).text == "admin ok"
    assert wait_for(lambda: stack.stdout_text().count(ADMIN_HTTP_RUN) == before + 2)
