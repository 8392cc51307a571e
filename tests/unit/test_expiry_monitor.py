"""The expiry monitor in memory: a vault, Graph, Table Storage and three alert channels faked (tests/fakes),
the real StateStore, Notifier, GraphReader and policy on top, and a clock walked day by day. What is asserted
is what an operator sees: which alerts reached which channel, at what level, and what the state remembers.
(Devstack proves the same path over real sockets in tests/integration/test_expiry.py.)"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import UpdateMode

from shared.errors import DownstreamError
from shared.expiry.eventgrid import parse_vault_event
from shared.expiry.monitor import ExpiryMonitor, SweepReport
from shared.expiry.notify import Channel
from shared.expiry.settings import ExpirySettings
from shared.expiry.state import STATE_TABLE, StateStore
from tests.fakes import AlertSink, FakeGraph, FakeHttp, FakeProbe, FakeSecretStore, FakeTables, WalkingClock
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket

pytestmark = pytest.mark.unit

VAULT = "kv-unit"
CHANNELS = (Channel("teams", "teams", "teams-url"), Channel("json", "json", "json-url"),
            Channel("slack", "slack", "slack-url"))  # fmt: skip
APP_ID = "7c4e2a1f-9b3d-4f5e-8a6c-2d1e0f9b8a71"


class World:
    """Everything one function app instance talks to, plus ways to start more instances over the same state."""

    def __init__(self) -> None:
        self.clock = WalkingClock()
        self.start = self.clock.now
        self.http = FakeHttp()
        self.vault = FakeSecretStore(f"https://{VAULT}.vault.azure.net/")
        self.tables = FakeTables(clock=self.clock)
        self.sink = AlertSink(self.http, self.vault, CHANNELS)
        self.graph = FakeGraph(self.http)
        self.probe = FakeProbe()
        self.monitor = self.instance()

    @property
    def table(self) -> Any:
        return self.tables.table(STATE_TABLE)

    def instance(self, *, graph: Any = "fake", probe: bool = False, dataverse_secret: str | None = None,
                 tolerance_s: float = 86400) -> ExpiryMonitor:  # fmt: skip
        settings = ExpirySettings(channels="", app_ids=("*",), drift_tolerance_s=tolerance_s)
        return ExpiryMonitor(
            settings,
            store=self.vault,
            states=StateStore(self.table),
            notifier=self.sink.notifier(self.vault),
            graph=self.graph.reader(self.http) if graph == "fake" else graph,
            probe=self.probe if probe else None,
            dataverse_secret_name=dataverse_secret,
            clock=self.clock,
        )

    def at(self, days: float) -> datetime:
        return self.start + timedelta(days=days)

    def secret(self, name: str, days: float | None, **properties: Any) -> str:
        self.vault.set_secret(name, f"value-of-{name}-0123456789", expires_on=None if days is None else self.at(days),
                              **properties)  # fmt: skip
        return f"kv-secret:{VAULT}:{name}"

    def alerts(self, channel: str = "json", credential: str | None = None) -> list[tuple[str, str, str]]:
        """(kind, level, severity) of what ``channel`` received, optionally about one credential."""
        return [(a["kind"], a["level"], a["severity"]) for a in self.sink.received[channel]
                if credential is None or a["credential"]["id"] == credential]  # fmt: skip


@pytest.fixture
def world() -> World:
    return World()


def sent(report: SweepReport, credential: str) -> list[tuple[str, str]]:
    return [(a.kind, a.level) for a in report.alerts if a.credential.id == credential]


# -- thresholds over time ------------------------------------------------------------------------------
def test_walking_day_by_day_each_threshold_alerts_once_in_order_on_every_channel(world: World) -> None:
    ladder = world.secret("ladder", 31)
    seen = []
    for day in range(36):
        world.clock.now = world.at(day)
        first = world.monitor.sweep()
        again = world.monitor.sweep()  # a second run the same day (a retry, a second instance) sends nothing
        assert again.alerts == []
        seen += [(day, level) for _, level in sent(first, ladder)]
    assert seen == [(1, "30d"), (17, "14d"), (24, "7d"), (30, "1d"), (31, "expired"), (34, "escalated")]
    expected = [("threshold", "30d", "info"), ("threshold", "14d", "warning"), ("threshold", "7d", "warning"),
                ("threshold", "1d", "error"), ("threshold", "expired", "critical"),
                ("threshold", "escalated", "critical")]  # fmt: skip
    assert world.alerts("json", ladder) == expected
    assert len(world.sink.received["teams"]) == len(world.sink.received["slack"]) == len(expected)
    state = world.monitor.states.get(ladder)
    assert state is not None
    assert (state.last_level, state.expires_on) == ("escalated", world.at(31))


def test_a_credential_first_seen_late_gets_the_level_it_is_at_not_the_ones_it_skipped(world: World) -> None:
    late = world.secret("late", 6.5)
    world.monitor.sweep()
    assert world.alerts("json", late) == [("threshold", "7d", "warning")]


def test_a_restarted_instance_remembers_what_was_sent(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()
    assert world.instance().sweep().alerts == []  # a fresh monitor reads the same table
    assert world.alerts("json", secret) == [("threshold", "30d", "info")]


def test_a_rotated_secret_gets_one_resolution_and_starts_over(world: World) -> None:
    secret = world.secret("s", 5)
    world.monitor.sweep()
    world.secret("s", 90)  # a new version, a later expiry
    world.monitor.sweep()
    world.monitor.sweep()
    assert world.alerts("json", secret) == [("threshold", "7d", "warning"), ("resolved", "resolved", "info")]
    assert "was rotated" in world.sink.received["json"][-1]["title"]
    state = world.monitor.states.get(secret)
    assert state is not None
    assert state.last_level is None


def test_no_expiry_date_means_no_alert(world: World) -> None:
    forever = world.secret("forever", None)
    report = world.monitor.sweep()
    assert dict((c.id, label) for c, label in report.credentials)[forever] == "no expiry"
    assert world.alerts("json", forever) == []


# -- acknowledge and snooze ----------------------------------------------------------------------------
def test_an_acknowledged_credential_stays_silent_then_sends_the_level_reached_once(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()  # 30d
    acknowledged = world.monitor.acknowledge(secret, "ops@contoso.com", until=world.at(10))
    assert acknowledged is not None
    assert acknowledged.acknowledged_by == "ops@contoso.com"
    labels = []
    for day in range(1, 11):
        world.clock.now = world.at(day)
        report = world.monitor.sweep()
        labels.append(dict((c.id, label) for c, label in report.credentials)[secret])
    assert world.alerts("json", secret) == [("threshold", "30d", "info"), ("threshold", "14d", "warning")]
    assert labels[5].startswith("14d (acknowledged by ops@contoso.com until")  # day 6: 14d reached, silent
    assert [a["level"] for a in world.sink.received["json"]][-1] == "14d"  # sent on day 10, when the ack ended


def test_a_snooze_defers_the_next_level_and_an_unknown_id_is_not_found(world: World) -> None:
    secret = world.secret("s", 10)
    world.monitor.sweep()  # 14d
    assert world.monitor.snooze(secret, world.at(5)) is not None
    world.clock.now = world.at(4)  # 6 days left: 7d reached, snoozed
    world.monitor.sweep()
    world.clock.now = world.at(5)
    world.monitor.sweep()
    assert world.alerts("json", secret) == [("threshold", "14d", "warning"), ("threshold", "7d", "warning")]
    assert world.monitor.snooze("kv-secret:kv-unit:nope", world.at(5)) is None
    assert world.monitor.acknowledge("kv-secret:kv-unit:nope", "ops") is None


def test_acknowledging_keeps_what_the_state_row_says_about_the_credential(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()
    world.monitor.acknowledge(secret, "ops@contoso.com")
    rows = {state.id: row for state, row in world.monitor.states.all()}
    assert (rows[secret]["name"], rows[secret]["source"], rows[secret]["owner"]) == ("s", "keyvault-secret",
                                                                                     f"vault {VAULT}")  # fmt: skip
    world.vault.delete_secret("s")  # so its removal is still noticed
    world.monitor.sweep()
    assert world.alerts("json", secret)[-1] == ("resolved", "resolved", "info")


def test_a_row_silenced_without_its_facts_is_still_noticed_removed(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()
    row = world.table.get_entity("credential", secret)
    for fact in ("name", "source", "owner", "key_id"):  # as an acknowledge before the merge fix left it
        del row[fact]
    world.table.update_entity(row, mode=UpdateMode.REPLACE)
    world.vault.delete_secret("s")
    world.monitor.sweep()
    assert world.alerts("json", secret)[-1] == ("resolved", "resolved", "info")
    assert world.sink.received["json"][-1]["credential"]["name"] == "s"


# -- removal -------------------------------------------------------------------------------------------
def test_a_removed_credential_gets_one_resolution_notice(world: World) -> None:
    secret = world.secret("s", 3)
    world.monitor.sweep()
    world.vault.delete_secret("s")
    report = world.monitor.sweep()
    world.monitor.sweep()
    assert sent(report, secret) == [("resolved", "resolved")]
    assert world.alerts("json", secret) == [("threshold", "7d", "warning"), ("resolved", "resolved", "info")]
    assert "was removed" in world.sink.received["json"][-1]["title"]


def test_a_vault_that_cannot_be_listed_is_a_problem_not_a_removal(world: World) -> None:
    secret = world.secret("s", 3)
    world.monitor.sweep()
    world.vault.fail("list_secrets", 403, "Forbidden", inner="ForbiddenByRbac")
    report = world.monitor.sweep()
    assert report.problems == [f"Key Vault not listed: ForbiddenByRbac: {_fix(report.problems[0])}"]
    assert world.alerts("json", secret) == [("threshold", "7d", "warning")]


def test_a_secret_of_another_vault_known_from_an_event_is_not_reported_removed(world: World) -> None:
    other = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-other"
    event = {"id": "e1", "topic": other, "subject": "theirs", "eventType": "Microsoft.KeyVault.SecretNearExpiry",
             "data": {"VaultName": "kv-other", "ObjectName": "theirs", "EXP": world.at(20).timestamp()}}  # fmt: skip
    world.monitor.on_event(parse_vault_event(event, (other,)))
    world.monitor.sweep()  # lists kv-unit only: it cannot tell whether kv-other's secret still exists
    assert world.alerts("json", "kv-secret:kv-other:theirs") == [("threshold", "30d", "info")]


# -- Event Grid ----------------------------------------------------------------------------------------
def test_a_vault_event_and_the_sweep_send_one_alert_between_them(world: World) -> None:
    secret = world.secret("s", 6)
    topic = f"/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{VAULT}"
    event = {"id": "e1", "topic": topic, "subject": "s", "eventType": "Microsoft.KeyVault.SecretNearExpiry",
             "data": {"VaultName": VAULT, "ObjectName": "s", "EXP": str(int(world.at(6).timestamp()))}}  # fmt: skip
    alerts = world.monitor.on_event(parse_vault_event(event, (topic,)))
    assert [(a.credential.id, a.level) for a in alerts] == [(secret, "7d")]
    assert world.monitor.sweep().alerts == []
    assert world.monitor.on_event(parse_vault_event(event, (topic,))) == []  # Event Grid delivers at least once
    assert world.alerts("json", secret) == [("threshold", "7d", "warning")]


# -- channels ------------------------------------------------------------------------------------------
def test_a_failing_channel_is_reported_does_not_stop_the_others_and_gets_the_alert_next_run(world: World) -> None:
    secret = world.secret("s", 6)
    world.sink.down("slack", 503)
    report = world.monitor.sweep()
    assert report.failed_channels == {secret: ["slack"]}
    assert len(world.sink.received["teams"]) == len(world.sink.received["json"]) == 1
    state = world.monitor.states.get(secret)
    assert state is not None
    assert state.undelivered == ["slack"]
    world.sink.up("slack")
    retry = world.monitor.sweep()
    assert retry.failed_channels == {}
    assert [m["text"] for m in world.sink.received["slack"]] == ["Key Vault secret s (vault kv-unit) expires in 6 days"]
    assert len(world.sink.received["teams"]) == len(world.sink.received["json"]) == 1  # not sent twice
    state = world.monitor.states.get(secret)
    assert state is not None
    assert state.undelivered == []


def test_a_channel_refusing_connections_and_one_whose_url_is_missing_fail_alone(world: World) -> None:
    world.secret("s", 6)
    world.sink.down("teams", None)
    world.vault.delete_secret("slack-url")
    report = world.monitor.sweep()
    assert set(map(tuple, report.failed_channels.values())) == {("slack", "teams")}
    assert world.alerts("json") == [("threshold", "7d", "warning")]


# -- Entra, drift, the probe ---------------------------------------------------------------------------
def _app(world: World, end_days: float, key_id: str = "5b1c0d6e-0000-4000-8000-000000000001") -> str:
    world.graph.add_app(APP_ID, "partner-sync", password_credentials=[
        {"keyId": key_id, "displayName": "current", "endDateTime": f"{world.at(end_days):%Y-%m-%dT%H:%M:%SZ}",
         "startDateTime": f"{world.at(-300):%Y-%m-%dT%H:%M:%SZ}", "hint": "abc"}])  # fmt: skip
    return key_id


def test_entra_secrets_alert_like_vault_secrets(world: World) -> None:
    key_id = _app(world, 12)
    world.monitor.sweep()
    assert world.alerts("json", f"entra-password:{APP_ID}:{key_id}") == [("threshold", "14d", "warning")]


def test_a_vault_copy_that_outlives_its_entra_secret_raises_one_drift_alert(world: World) -> None:
    key_id = _app(world, 10)
    copy = world.secret("partner-secret", 400, tags={"entraKeyId": key_id})
    world.monitor.sweep()
    world.monitor.sweep()
    drift = [a for a in world.sink.received["json"] if a["kind"] == "drift"]
    assert [(a["credential"]["id"], a["severity"]) for a in drift] == [(copy, "error")]  # Entra ends in 10 days
    assert drift[0]["facts"]["Entra end date"] == f"{world.at(10):%Y-%m-%d}"


def test_a_copy_matched_by_its_hint_and_within_tolerance_raises_nothing(world: World) -> None:
    _app(world, 10)
    world.vault.set_secret("dataverse-secret", "abc-the-value-0123456789", expires_on=world.at(10) + timedelta(hours=2))
    world.instance(dataverse_secret="dataverse-secret").sweep()
    assert [a for a in world.sink.received["json"] if a["kind"] == "drift"] == []


def test_graph_refusing_is_a_problem_and_raises_no_false_drift(world: World) -> None:
    key_id = _app(world, 10)
    world.secret("partner-secret", 400, tags={"entraKeyId": key_id})
    world.secret("soon", 6)
    world.graph.fail(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    report = world.monitor.sweep()
    assert len(report.problems) == 1
    assert report.problems[0].startswith("Entra credentials not listed: Authorization_RequestDenied")
    assert world.alerts("json") == [("threshold", "7d", "warning")]  # Key Vault's alerts still go out, no drift


class _Unreachable:
    def applications(self, app_ids: Sequence[str]) -> Iterable[dict[str, Any]]:
        raise DownstreamError("Microsoft Graph", "https://graph.microsoft.com", None, retryable=True,
                              reason="ConnectionError")  # fmt: skip


def test_graph_unreachable_is_a_problem_and_the_vault_is_still_swept(world: World) -> None:
    world.secret("soon", 6)
    report = world.instance(graph=_Unreachable()).sweep()
    assert len(report.problems) == 1
    assert report.problems[0].startswith("Entra credentials not listed: DownstreamError")
    assert world.alerts("json") == [("threshold", "7d", "warning")]


def test_a_failing_probe_alerts_once_and_its_recovery_once(world: World) -> None:
    monitor = world.instance(probe=True)
    monitor.sweep()
    world.probe.fail("AADSTS7000215")
    failing = monitor.sweep()
    monitor.sweep()
    world.probe.recover()
    monitor.sweep()
    monitor.sweep()
    assert world.alerts("json", "probe:dataverse") == [("probe_failed", "probe_failed", "critical"),
                                                       ("probe_recovered", "probe_recovered", "info")]  # fmt: skip
    assert dict((c.id, label) for c, label in failing.credentials)["probe:dataverse"] == "FAILED AADSTS7000215"
    assert failing.problems == []  # the probe reports by alert, not as an unlisted source


# -- two instances racing ------------------------------------------------------------------------------
def test_two_sweepers_racing_for_a_new_credential_send_one_alert(world: World) -> None:
    secret = world.secret("s", 20)
    other = world.instance()
    world.table.before_next("create_entity", other.sweep)  # the other instance claims the row first
    report = world.monitor.sweep()
    assert sent(report, secret) == []
    assert world.alerts("json", secret) == [("threshold", "30d", "info")]


def test_two_sweepers_racing_for_the_next_threshold_send_one_alert(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()
    world.clock.now = world.at(7)  # 13 days left: 14d is due
    other = world.instance()
    world.table.before_next("update_entity", other.sweep)
    world.monitor.sweep()
    assert world.alerts("json", secret) == [("threshold", "30d", "info"), ("threshold", "14d", "warning")]


def test_a_row_that_keeps_changing_leaves_the_credential_busy_without_an_alert(world: World) -> None:
    secret = world.secret("s", 20)
    world.monitor.sweep()
    world.clock.now = world.at(7)
    for _ in range(3):  # someone else writes the row before each of our claims
        world.table.before_next("update_entity", lambda: world.table.upsert_entity(
            {"PartitionKey": "credential", "RowKey": secret, "note": "theirs"}))  # fmt: skip
    report = world.monitor.sweep()
    assert dict((c.id, label) for c, label in report.credentials)[secret] == "busy"
    assert world.alerts("json", secret) == [("threshold", "30d", "info")]


def _fix(problem: str) -> str:
    return problem.split(": ", 2)[2]
