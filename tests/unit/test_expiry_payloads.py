"""Expiry alerts on the wire: Event Grid parsing, the Adaptive Card / Slack / JSON payloads, channels and
the notifier's retries. (The policy over time is proved on devstack in tests/integration/test_expiry.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from shared.errors import ConfigError
from shared.expiry.eventgrid import EventRejected, parse_vault_event
from shared.expiry.model import Credential
from shared.expiry.notify import (
    Channel,
    Notifier,
    adaptive_card,
    json_payload,
    parse_channels,
    slack_payload,
    teams_payload,
)
from shared.expiry.policy import levels, threshold_alert

pytestmark = pytest.mark.unit

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "adaptive-card-1.5.schema.json").read_text())
TOPIC = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-prod"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SECRET = Credential(
    id="kv-secret:kv-prod:dataverse-client-secret", name="dataverse-client-secret", source="keyvault-secret",
    expires_on=NOW + timedelta(days=6, hours=3), owner="vault kv-prod", key_id="3f2b9c1e-1111-2222-3333-444455556666",
)  # fmt: skip
ALERT = threshold_alert(SECRET, levels()[2], NOW)  # the 7-day level


# -- Event Grid: lenient, as Microsoft's own sample requires --------------------------------------------
DOCS_SAMPLE = {  # the documented example's quirks: "ObjectName " key, " 1" version, epochs as strings
    "id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64", "topic": TOPIC, "subject": "newsecret",
    "eventType": "Microsoft.KeyVault.SecretNearExpiry", "eventTime": "2019-07-25T01:08:33.1036736Z",
    "data": {"Id": "https://kv-prod.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
             "VaultName": "kv-prod", "ObjectType": "Secret", "ObjectName ": "newsecret", "Version": " ee059b2bb5bc",
             "NBF": "1559081980", "EXP": "1559568556"},
    "dataVersion": "1", "metadataVersion": "1",
}  # fmt: skip


def test_the_documented_sample_parses_despite_its_quirks() -> None:
    event = parse_vault_event(DOCS_SAMPLE, (TOPIC,))
    assert (event.kind, event.stage, event.object_name, event.vault_name) == ("secret", "near", "newsecret", "kv-prod")
    assert event.version == "ee059b2bb5bc"
    assert event.expires_on == datetime.fromtimestamp(1559568556, UTC)


def test_camel_case_cloud_events_and_integer_epochs_parse() -> None:
    cloud = {"id": "1", "source": TOPIC, "type": "Microsoft.KeyVault.CertificateExpired", "subject": "cert",
             "data": {"vaultName": "kv-prod", "objectName": "cert", "exp": 1893456000}}  # fmt: skip
    event = parse_vault_event(cloud, (TOPIC,))
    assert (event.kind, event.stage, event.expires_on) == ("certificate", "expired", datetime(2030, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"topic": "/subscriptions/x/providers/Microsoft.KeyVault/vaults/other"}, "not in EXPIRY_EVENT_TOPICS"),
        ({"eventType": "Microsoft.KeyVault.SecretNewVersionCreated"}, "not a Key Vault expiry event"),
        ({"data": {"ObjectName": "s", "EXP": "soon"}}, "data.EXP is not a Unix time"),
        ({"data": {}, "subject": ""}, "ObjectName (and subject) is missing"),
    ],
)
def test_events_we_do_not_act_on_are_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(EventRejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_vault_event({**DOCS_SAMPLE, **change}, (TOPIC,))


# -- payloads -------------------------------------------------------------------------------------------
def test_the_adaptive_card_validates_against_the_schema_and_carries_the_facts() -> None:
    card = adaptive_card(ALERT)
    jsonschema.validate(card, SCHEMA)
    text = json.dumps(card)
    for fact in (
        "dataverse-client-secret",
        "kv-prod",
        "2026-11-27 15:00 UTC",
        "6.1",
        SECRET.key_id,
        "expires in 6 days",
    ):
        assert fact in text, fact
    envelope = teams_payload(ALERT)  # what the Workflows trigger takes: a message with the card attached
    assert envelope["type"] == "message"
    assert envelope["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert envelope["attachments"][0]["content"] == card


def test_the_schema_check_can_fail() -> None:
    card = adaptive_card(ALERT)
    card["body"][2]["facts"] = [{"title": "no value"}]  # a Fact needs a value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(card, SCHEMA)


def test_slack_and_generic_payloads_carry_the_facts() -> None:
    slack = slack_payload(ALERT)
    assert slack["text"] == ALERT.title  # the notification line and fallback
    assert slack["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": ALERT.title}}
    fields = " ".join(f["text"] for f in slack["blocks"][2]["fields"])
    assert "*Expires*\n2026-11-27 15:00 UTC" in fields
    assert len(slack["blocks"][2]["fields"]) <= 10  # Slack's limit per section
    generic = json_payload(ALERT)
    assert generic["event"] == "credential_expiry_alert"
    assert (generic["kind"], generic["level"], generic["severity"]) == ("threshold", "7d", "warning")
    assert generic["credential"]["expires_on"] == "2026-11-27T15:00:00+00:00"
    json.dumps(generic)  # plain JSON


# -- channels and the notifier --------------------------------------------------------------------------
def test_channels_are_parsed_and_mistakes_named() -> None:
    assert parse_channels("teams:teams-url, ops=slack:slack-url,json:hook") == (
        Channel("teams", "teams", "teams-url"), Channel("ops", "slack", "slack-url"), Channel("json", "json", "hook"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="EXPIRY_CHANNELS: 'email:x' is not kind:secret-name"):
        parse_channels("email:x")
    with pytest.raises(ConfigError, match="channel names repeat"):
        parse_channels("slack:a,slack:b")


class ScriptedSession:
    def __init__(self, outcomes: dict[str, list[int | Exception]]) -> None:
        self.outcomes = outcomes
        self.calls: list[str] = []

    def post(self, url: str, json: Any, timeout: float) -> Any:
        self.calls.append(url)
        outcome = self.outcomes[url].pop(0) if len(self.outcomes[url]) > 1 else self.outcomes[url][0]
        if isinstance(outcome, Exception):
            raise outcome
        response = requests.Response()
        response.status_code = outcome
        return response


def test_a_dead_channel_is_retried_with_backoff_and_does_not_block_the_others(caplog: pytest.LogCaptureFixture) -> None:
    urls = {"teams-url": "https://dead.invalid/hook?sig=SECRETSIG", "slack-url": "https://slack/x", "hook": "https://j"}
    session = ScriptedSession({urls["teams-url"]: [requests.ConnectionError(f"refused {urls['teams-url']}")],
                               urls["slack-url"]: [503, 200], urls["hook"]: [200]})  # fmt: skip
    sleeps: list[float] = []
    notifier = Notifier(parse_channels("teams:teams-url,slack:slack-url,json:hook"), urls.__getitem__,
                        session=session, sleep=sleeps.append)  # type: ignore[arg-type]  # fmt: skip
    assert notifier.send(ALERT) == ["teams"]
    assert session.calls.count(urls["teams-url"]) == 3  # SEND_ATTEMPTS
    assert session.calls.count(urls["slack-url"]) == 2  # 503, then delivered
    assert session.calls.count(urls["hook"]) == 1
    assert sleeps == [0.5, 1.0, 0.5]
    assert "alert_channel_failed channel=teams" in caplog.text
    assert "SECRETSIG" not in caplog.text  # a webhook URL is a credential: never logged
    assert notifier.send(ALERT, only=["teams"]) == ["teams"]  # the next run retries just that channel
    assert session.calls.count(urls["slack-url"]) == 2
