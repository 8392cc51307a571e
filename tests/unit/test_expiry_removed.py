"""The expiry monitor's "credential removed" notice (``ExpiryMonitor._removed``, ``policy.removed``): a credential
that was alerted at a threshold and is then gone from a source listed in full gets exactly one resolved notice
naming it, on every channel; a source that was not listed in full (Key Vault down, Graph down, EXPIRY_APP_IDS
naming other apps) proves nothing gone; a credential never alerted, or already resolved, gets none; and the
notice is never sent twice. In memory: the fakes of tests/fakes under the real StateStore, Notifier, GraphReader
and policy."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.expiry.monitor import ExpiryMonitor, SweepReport
from shared.expiry.notify import Channel
from shared.expiry.settings import ExpirySettings
from shared.expiry.state import STATE_TABLE, StateStore
from tests.fakes import AlertSink, FakeGraph, FakeHttp, FakeSecretStore, FakeTables, WalkingClock
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket

pytestmark = pytest.mark.unit

VAULT = "kv-gone"
CHANNELS = (Channel("teams", "teams", "teams-url"), Channel("json", "json", "json-url"),
            Channel("slack", "slack", "slack-url"))  # fmt: skip
APP = "7c4e2a1f-9b3d-4f5e-8a6c-2d1e0f9b8a71"
OTHER_APP = "0d3b5f7a-1c2e-4a6b-9d8f-3e5a7c9b1d44"
KEY_ID = "5b1c0d6e-0000-4000-8000-000000000001"
THUMBPRINT = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")


class World:
    def __init__(self) -> None:
        self.clock = WalkingClock()
        self.start = self.clock.now
        self.http = FakeHttp()
        self.vault = FakeSecretStore(f"https://{VAULT}.vault.azure.net/")
        self.tables = FakeTables(clock=self.clock)
        self.sink = AlertSink(self.http, self.vault, CHANNELS)
        self.graph = FakeGraph(self.http)

    def monitor(self, app_ids: Sequence[str] = ("*",)) -> ExpiryMonitor:
        """A fresh instance (a new worker) over the same state table."""
        return ExpiryMonitor(
            ExpirySettings(channels="", app_ids=tuple(app_ids)),
            store=self.vault,
            states=StateStore(self.tables.table(STATE_TABLE)),
            notifier=self.sink.notifier(self.vault),
            graph=self.graph.reader(self.http),
            clock=self.clock,
        )

    def at(self, days: float) -> datetime:
        return self.start + timedelta(days=days)

    def secret(self, name: str, days: float | None) -> str:
        self.vault.set_secret(name, f"value-of-{name}-0123456789", expires_on=None if days is None else self.at(days))
        return f"kv-secret:{VAULT}:{name}"

    def certificate(self, name: str, days: float) -> str:
        self.vault.set_certificate(name, expires_on=self.at(days), thumbprint=THUMBPRINT)
        return f"kv-certificate:{VAULT}:{name}"

    def entra_password(self, app_id: str, days: float, key_id: str = KEY_ID) -> str:
        end, start = f"{self.at(days):%Y-%m-%dT%H:%M:%SZ}", f"{self.at(-300):%Y-%m-%dT%H:%M:%SZ}"
        password = {
            "keyId": key_id,
            "displayName": "current",
            "endDateTime": end,
            "startDateTime": start,
            "hint": "abc",
        }
        self.graph.add_app(app_id, f"app-{app_id[:4]}", password_credentials=[password])
        return f"entra-password:{app_id}:{key_id}"

    def remove_entra_passwords(self, app_id: str) -> None:
        self.graph.apps[app_id]["passwordCredentials"] = []

    def received(self, credential: str, channel: str = "json") -> list[dict[str, Any]]:
        return [a for a in self.sink.received[channel] if a["credential"]["id"] == credential]

    def removals(self, credential: str, channel: str = "json") -> list[dict[str, Any]]:
        return [a for a in self.received(credential, channel) if a["kind"] == "resolved"]


@pytest.fixture
def world() -> World:
    return World()


def resolved(report: SweepReport, credential: str) -> list[str]:
    return [a.title for a in report.alerts if a.credential.id == credential and a.kind == "resolved"]


# -- one notice, naming it ---------------------------------------------------------------------------------------
def test_an_alerted_secret_then_deleted_gets_one_removed_notice_naming_it_on_every_channel(world: World) -> None:
    secret = world.secret("partner-api-key", 5)
    monitor = world.monitor()
    monitor.sweep()
    assert [a["level"] for a in world.received(secret)] == ["7d"]
    world.vault.delete_secret("partner-api-key")
    report = monitor.sweep()
    title = f"Resolved: Key Vault secret partner-api-key (vault {VAULT}) was removed"
    assert resolved(report, secret) == [title]
    for channel in ("teams", "json", "slack"):
        assert len(world.sink.received[channel]) == 2, channel  # the 7d alert, then the notice
    notice = world.removals(secret)
    assert [(n["level"], n["severity"], n["title"]) for n in notice] == [("resolved", "info", title)]
    assert notice[0]["credential"]["name"] == "partner-api-key"
    assert notice[0]["facts"]["Credential"] == "partner-api-key"
    assert "no longer exists" in notice[0]["text"]
    state = monitor.states.get(secret)
    assert state is not None
    assert state.last_level is None  # closed: nothing is alerting about it any more


def test_the_notice_is_not_sent_again_on_later_sweeps_or_by_another_instance(world: World) -> None:
    secret = world.secret("s", 5)
    world.monitor().sweep()
    world.vault.delete_secret("s")
    assert len(resolved(world.monitor().sweep(), secret)) == 1
    for days in (0, 1, 8):  # the same day again, the next day, past the old expiry date
        world.clock.now = world.at(days)
        assert world.monitor().sweep().alerts == []
    assert len(world.removals(secret)) == 1


def test_an_alerted_certificate_then_deleted_gets_one_notice(world: World) -> None:
    certificate = world.certificate("tls", 12)
    world.monitor().sweep()
    world.vault.delete_certificate("tls")
    world.monitor().sweep()
    world.monitor().sweep()
    assert [n["title"] for n in world.removals(certificate)] == [
        f"Resolved: Key Vault certificate tls (vault {VAULT}) was removed"
    ]


@pytest.mark.parametrize("app_ids", [("*",), (APP,)], ids=["every-app", "app-named"])
def test_an_alerted_entra_secret_removed_from_a_listed_app_gets_one_notice(
    world: World, app_ids: Sequence[str]
) -> None:
    password = world.entra_password(APP, 10)
    world.monitor(app_ids).sweep()
    assert [a["level"] for a in world.received(password)] == ["14d"]
    world.remove_entra_passwords(APP)
    world.monitor(app_ids).sweep()
    world.monitor(app_ids).sweep()
    notices = world.removals(password)
    assert len(notices) == 1
    assert notices[0]["title"] == f"Resolved: Entra client secret current (app app-7c4e ({APP})) was removed"
    assert notices[0]["credential"]["id"] == password


# -- a source not listed in full proves nothing ------------------------------------------------------------------
@pytest.mark.parametrize(("operation", "status", "code"), [("list_secrets", 503, "ServiceUnavailable"),
                                                           ("list_certificates", 403, "Forbidden")])  # fmt: skip
def test_key_vault_not_listed_sends_no_notice_and_the_next_full_listing_sends_one(
    world: World, operation: str, status: int, code: str
) -> None:
    secret = world.secret("s", 5)
    world.monitor().sweep()
    world.vault.delete_secret("s")
    world.vault.fail(operation, status, code)
    report = world.monitor().sweep()
    assert report.problems[0].startswith("Key Vault not listed")
    assert resolved(report, secret) == []
    assert world.removals(secret) == []
    state = world.monitor().states.get(secret)
    assert state is not None
    assert state.last_level == "7d"  # still remembered as alerting
    world.vault.heal()
    world.monitor().sweep()
    assert len(world.removals(secret)) == 1


def test_graph_not_answering_sends_no_notice_for_entra_credentials(world: World) -> None:
    password = world.entra_password(APP, 10)
    world.monitor().sweep()
    world.remove_entra_passwords(APP)
    world.graph.fail(503, "serviceNotAvailable", "Service unavailable")
    report = world.monitor().sweep()
    assert report.problems[0].startswith("Entra credentials not listed")
    assert world.removals(password) == []


def test_expiry_app_ids_naming_other_apps_prove_nothing_about_this_one(world: World) -> None:
    password = world.entra_password(APP, 10)
    world.entra_password(OTHER_APP, 200, key_id="6c2d1e7f-0000-4000-8000-000000000002")
    world.monitor(("*",)).sweep()  # alerted while every app was watched
    world.remove_entra_passwords(APP)
    monitor = world.monitor((OTHER_APP,))  # now EXPIRY_APP_IDS names the other app only
    report = monitor.sweep()
    monitor.sweep()
    assert report.problems == []
    assert world.removals(password) == []
    assert resolved(report, password) == []


def test_a_vault_secret_is_not_proved_gone_by_a_listing_of_entra_alone(world: World) -> None:
    """The Entra listing is complete, the vault's is not: the vault's credential stays open."""
    secret = world.secret("s", 5)
    password = world.entra_password(APP, 10)
    world.monitor().sweep()
    world.vault.delete_secret("s")
    world.remove_entra_passwords(APP)
    world.vault.fail("list_secrets", 503, "ServiceUnavailable")
    world.monitor().sweep()
    assert world.removals(secret) == []
    assert len(world.removals(password)) == 1


# -- nothing was alerting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("days", [200, None], ids=["far-from-expiry", "no-expiry"])
def test_a_credential_never_alerted_gets_no_notice_when_it_goes(world: World, days: float | None) -> None:
    secret = world.secret("quiet", days)
    monitor = world.monitor()
    monitor.sweep()
    assert monitor.states.get(secret) is not None  # seen and remembered, at no level
    assert world.received(secret) == []
    world.vault.delete_secret("quiet")
    assert monitor.sweep().alerts == []
    assert world.received(secret) == []


def test_an_entra_secret_never_alerted_gets_no_notice_when_it_goes(world: World) -> None:
    password = world.entra_password(APP, 200)
    world.monitor().sweep()
    world.remove_entra_passwords(APP)
    world.monitor().sweep()
    assert world.received(password) == []


def test_a_credential_already_resolved_by_rotation_gets_no_removed_notice(world: World) -> None:
    secret = world.secret("s", 5)
    world.monitor().sweep()
    world.secret("s", 180)  # rotated: a new version with a later expiry closes the alerts
    world.monitor().sweep()
    world.vault.delete_secret("s")
    world.monitor().sweep()
    assert [(a["kind"], a["level"]) for a in world.received(secret)] == [("threshold", "7d"), ("resolved", "resolved")]
    assert "was rotated" in world.received(secret)[-1]["title"]
