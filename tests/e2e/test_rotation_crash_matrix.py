"""Issue 20, acceptance 2: the host SIGKILLed after each step of a secret rotation in turn, then restarted.
Each row ends with exactly one valid credential in Entra, the one Key Vault's latest version holds, no
orphan, and a sampler that asked Entra for a token with Key Vault's current value every second never saw it
fail.

Each step saves its state, then sends its notice: devstack's alert sink holds the JSON channel's notices for
a moment, so the rotation stops right after the step under test and the kill lands there, every run. The
retire row holds Key Vault's PATCH instead: the kill lands after Graph removed the old password and before
the old version was disabled."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.devstack_process import DevstackProcess
from tests.e2e.rotation_world import (
    SECRET,
    Sampler,
    digest,
    entra_view,
    phase_is,
    start_host,
    start_stack,
    token_error,
    vault_client,
    wait_for,
)
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

NOTICE_HOLD_S = 2.0  # each step's notice waits this long: the window in which the test kills the host
START_RETRY_S = 30
ROWS = ["planned", "added", "stored", "verified", "switched", "retiring"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = start_stack(tmp_path_factory.mktemp("rotationcrash"), "rotationcrash")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sampler(stack: DevstackProcess) -> Iterator[Sampler]:
    import os

    env = stack.app_settings()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the sampler's SDK clients read the managed-identity endpoint and CA bundle
    running = Sampler(stack)
    running.start()
    yield running
    running.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def hold(stack: DevstackProcess, row: str) -> None:
    if row == "retiring":
        stack._call("keyvault", "/_devstack/outage", {"seconds": 300, "delay_s": 20, "methods": ["PATCH"]})
    else:
        stack._call("alerts", "/_devstack/outage", {"seconds": 300, "delay_s": NOTICE_HOLD_S,
                                                   "path_contains": "/hooks/json"})  # fmt: skip


def release(stack: DevstackProcess) -> None:
    stack._call("keyvault", "/_devstack/outage", {"seconds": 0})
    stack._call("alerts", "/_devstack/outage", {"seconds": 0})


@pytest.mark.parametrize("row", ROWS)
def test_sigkill_after_a_step_then_restart_ends_with_one_valid_credential(
    row: str, stack: DevstackProcess, sampler: Sampler, app_env
) -> None:
    app_env(stack)
    before = [p["key_id"] for p in entra_view(stack)["passwords"]]
    assert len(before) == 1, "each row starts from one credential (the last row's result)"
    old_version = vault_client(stack).get_secret(SECRET).properties.version
    host = start_host(stack, f"rotationcrash-{row}")
    try:
        hold(stack, row)
        starter = threading.Thread(target=lambda: _start(host), daemon=True)
        starter.start()
        if row == "retiring":
            wait_for("the old password's removal", lambda: before[0] not in _key_ids(stack), timeout_s=90)
        else:
            wait_for(f"the {row} step", phase_is(host, row), every_s=0.05)
    finally:
        host.kill()  # also when the wait failed: a host left running would move the next row's rotation on
        release(stack)
    restarted = start_host(stack, f"rotationcrash-{row}-restarted")
    try:
        done = wait_for("the resumed rotation's end", phase_is(restarted, "retired", "failed"), timeout_s=120)
    finally:
        restarted.stop()
    assert done["phase"] == "retired", done
    passwords = entra_view(stack)["passwords"]
    assert len(passwords) == 1, f"exactly one credential, no orphan: {passwords}"
    assert passwords[0]["key_id"] not in before, "a new one"
    latest = vault_client(stack).get_secret(SECRET)
    assert digest(latest.value or "") == passwords[0]["value_sha256"], "Key Vault's latest is Entra's credential"
    assert latest.properties.tags["entraKeyId"] == passwords[0]["key_id"]
    assert token_error(stack, latest.value or "") is None
    assert _disabled(stack, old_version or ""), "the old Key Vault version is disabled"
    assert sampler.failures == [], "a fresh token with Key Vault's current value never failed"


def _disabled(stack: DevstackProcess, version: str) -> bool:
    from azure.core.exceptions import HttpResponseError

    try:
        vault_client(stack).get_secret(SECRET, version)
    except HttpResponseError as exc:
        return exc.status_code == 403 and "disabled" in str(exc).lower()
    return False


def _key_ids(stack: DevstackProcess) -> list[str]:
    return [p["key_id"] for p in entra_view(stack)["passwords"]]


def _start(host: HostProcess) -> None:
    """The admin route runs the rotation until it waits or the host dies; it answers 409 while the host's own
    timer tick holds the rotation's lease, so ask again."""
    deadline = time.monotonic() + START_RETRY_S
    while time.monotonic() < deadline:
        try:
            answer = host.post("/api/rotation/start", timeout=120, key=host.master_key())
        except Exception:  # the host was killed under the request: expected
            return
        if answer.status_code != 409:
            return
        time.sleep(0.2)
