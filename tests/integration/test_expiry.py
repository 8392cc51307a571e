"""Credential-expiry monitoring on devstack: the real Key Vault and Graph emulators, state in Azurite, alerts
in devstack's alert sink. The clock is injected and walked day by day; a "restart" is a fresh interpreter."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.devstack_process import ROOT, DevstackProcess, run_python

pytestmark = pytest.mark.integration

LADDER = {"ladder-45": "+45d", "ladder-29": "+29d", "ladder-13": "+13d", "ladder-6": "+6d", "ladder-0": "+0d",
          "ladder-minus-1": "-1d"}  # fmt: skip
DRIFT_SECRET = "partner-sync-secret"
WALK_DAYS = 40


def expiry_scenario(directory: Path) -> Path:
    """The default world plus: secrets at +45…-1 days, and a Key Vault copy saying 2027 of an Entra secret
    that ends in 10 days (tagged with its keyId)."""
    scenario = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    scenario["applications"].append(
        {"name": "partner-sync", "app_id": "7c4e2a1f-9b3d-4f5e-8a6c-2d1e0f9b8a71", "display_name": "partner-sync",
         "password_credentials": [{"display_name": "current", "start": "-355d", "end": "+10d"}]}
    )  # fmt: skip
    secrets = scenario["vault"]["secrets"]
    secrets += [{"name": name, "expires": offset} for name, offset in LADDER.items()]
    secrets.append(
        {"name": DRIFT_SECRET, "value_from": {"app": "partner-sync", "password": "current"},
         "expires": "2027-06-30T00:00:00Z", "tags": {"entraKeyId": "password:partner-sync/current"}}
    )  # fmt: skip
    secrets.append({"name": "flaky-webhook-url", "value_from": {"alert_sink": "flaky"}})
    secrets.append({"name": "dead-webhook-url", "value": "http://127.0.0.1:9/hook"})  # nothing listens there
    scenario["settings"]["EXPIRY_APP_IDS"] = "*"  # every app the identity can read
    path = directory / "expiry.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


@pytest.fixture(scope="module")
def expiry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    directory = tmp_path_factory.mktemp("expiry")
    process = DevstackProcess(expiry_scenario(directory), directory / "state", "expiry", "--memory")
    yield process
    process.stop()


def sink(stack: DevstackProcess, path: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    url = f"{stack.env['DEVSTACK_ALERTS_URL']}{path}"
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - devstack on loopback
        return json.loads(response.read())


def received(stack: DevstackProcess, channel: str = "json") -> list[dict[str, Any]]:
    return [a["body"] for a in sink(stack, f"/_devstack/alerts?channel={channel}")["alerts"]]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


RESTART_SCRIPT = """
import json, os
from datetime import datetime
from shared.expiry.wiring import build_monitor
now = datetime.fromisoformat(os.environ["TEST_NOW"])
report = build_monitor(clock=lambda: now).sweep()
print(json.dumps({"alerts": [(a.credential.id, a.level) for a in report.alerts], "problems": report.problems}))
"""


def restart_and_sweep(stack: DevstackProcess, now: datetime) -> Any:
    stack.env["TEST_NOW"] = now.isoformat()
    try:
        return run_python(RESTART_SCRIPT, stack)
    finally:
        del stack.env["TEST_NOW"]


def test_each_threshold_once_in_order_over_40_days_with_ack_snooze_and_restarts(
    expiry_stack: DevstackProcess, app_env: Any
) -> None:
    from shared.expiry.wiring import build_monitor

    stack = expiry_stack
    app_env(stack)
    sink(stack, "/_devstack/alerts/reset", {})
    clock = Clock()
    start = clock.now
    monitor = build_monitor(clock=clock)
    seen: list[tuple[int, str, str]] = []  # (day, credential name, level) as the sink received them
    for day in range(WALK_DAYS + 1):
        clock.now = start + timedelta(days=day)
        if day == 1:
            assert monitor.acknowledge(
                "kv-secret:dvbridge-dev:ladder-13", "ops@contoso.com", start + timedelta(days=10)
            )
        if day == 16:
            assert monitor.snooze("kv-secret:dvbridge-dev:ladder-45", start + timedelta(days=33))
        if day in (20, WALK_DAYS):  # a restarted host (fresh interpreter, state from Azurite) resends nothing
            assert restart_and_sweep(stack, clock.now) == {"alerts": [], "problems": []}
        before = len(received(stack))
        report = monitor.sweep()
        assert report.problems == []
        new = received(stack)[before:]
        seen += [(day, str(a["credential"]["name"]), str(a["level"])) for a in new if a["kind"] == "threshold"]

    def ladder(name: str) -> list[tuple[int, str]]:
        return [(day, level) for day, who, level in seen if who == name]

    assert ladder("ladder-45") == [(15, "30d"), (33, "14d"), (38, "7d")]  # 14d reached on day 31, snoozed to 33
    assert ladder("ladder-29") == [(0, "30d"), (15, "14d"), (22, "7d"), (28, "1d"), (29, "expired"), (32, "escalated")]
    assert ladder("ladder-13") == [(0, "14d"), (10, "7d"), (12, "1d"), (13, "expired"), (16, "escalated")]  # ack to 10
    assert ladder("ladder-6") == [(0, "7d"), (5, "1d"), (6, "expired"), (9, "escalated")]
    assert ladder("ladder-0") == [(0, "expired"), (3, "escalated")]
    assert ladder("ladder-minus-1") == [(0, "expired"), (2, "escalated")]
    # Every channel got the same alerts: one Teams card per JSON alert.
    assert len(received(stack, "teams")) == len(received(stack, "json")) == len(received(stack, "slack"))


def test_a_vault_copy_that_outlives_its_entra_secret_raises_one_drift_alert(
    expiry_stack: DevstackProcess, app_env: Any
) -> None:
    from shared.expiry.wiring import build_monitor

    app_env(expiry_stack)
    monitor = build_monitor()
    monitor.sweep()
    monitor.sweep()
    drift = [a for a in received(expiry_stack) if a["kind"] == "drift"]  # this module's runs, all of them
    assert len(drift) == 1, drift
    text = drift[0]["text"]
    ends = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%d")
    assert f"Key Vault secret {DRIFT_SECRET} (vault dvbridge-dev) says it expires 2027-06-30" in text
    assert "Entra client secret current (app partner-sync (7c4e2a1f-9b3d-4f5e-8a6c-2d1e0f9b8a71))" in text
    assert f"ends {ends}" in text
    assert drift[0]["facts"]["Entra end date"] == ends


def test_a_dead_channel_does_not_stop_the_others_and_is_retried_next_run(
    expiry_stack: DevstackProcess, app_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.expiry.wiring import build_monitor

    stack = expiry_stack
    app_env(
        stack,
        EXPIRY_CHANNELS="json:alerts-webhook-url,flaky=json:flaky-webhook-url,dead=json:dead-webhook-url",
    )
    # dead: its URL refuses connections (nothing listens on the discard port); flaky: failing for now.
    sink(stack, "/_devstack/control", {"fail": {"flaky": 503}})
    clock = Clock()
    clock.now += timedelta(days=400)  # everything is past its last threshold: fresh alerts for all
    monitor = build_monitor(clock=clock)
    try:
        report = monitor.sweep()
    finally:
        sink(stack, "/_devstack/control", {"fail": {}})
    assert report.alerts, "expected alerts 400 days on"
    failed = {tuple(channels) for channels in report.failed_channels.values()}
    assert failed == {("dead", "flaky")}
    assert "alert_channel_failed channel=dead" in caplog.text
    flaky_before = len(received(stack, "flaky"))
    monitor.sweep()  # the next run: flaky is back and gets what it missed; dead is tried again and fails again
    assert len(received(stack, "flaky")) - flaky_before == len([a for a in report.alerts if a.kind == "threshold"])


def test_a_rotated_secret_gets_one_resolution_notice_and_starts_over(
    expiry_stack: DevstackProcess, app_env: Any
) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    from shared.expiry.wiring import build_monitor

    stack = expiry_stack
    app_env(stack)
    name, credential_id = "ladder-6", "kv-secret:dvbridge-dev:ladder-6"
    monitor = build_monitor()
    monitor.sweep()  # ladder-6 has alerted (6 days left) by now, in this test or the walk
    assert monitor.states.get(credential_id).last_level is not None  # type: ignore[union-attr]
    # The rotation, as an operator's identity with Secrets Officer does it: a new version, a later expiry.
    admin = ManagedIdentityCredential(client_id="6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31")
    vault = SecretClient(stack.env["KEY_VAULT_URL"], admin, verify_challenge_resource=False)
    vault.set_secret(name, "rotated-value", expires_on=datetime.now(UTC) + timedelta(days=90))
    before = len(received(stack))
    monitor.sweep()
    monitor.sweep()
    notices = [a for a in received(stack)[before:] if a["credential"]["id"] == credential_id]
    assert [(a["kind"], a["level"]) for a in notices] == [("resolved", "resolved")]
    assert "was rotated" in notices[0]["title"]
    state = monitor.states.get(credential_id)
    assert state is not None
    assert state.last_level is None  # starts over: the 30-day alert will come again, 60 days from now
