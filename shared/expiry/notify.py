"""Notifiers: Teams (Workflows webhook with an Adaptive Card), Slack incoming webhook, generic JSON.

Channel URLs are Key Vault secrets (a webhook URL is a bearer credential). Each channel is retried with
backoff on its own (the NOTIFY policy of shared.outgoing_http); one failing channel never blocks the others,
and its name is returned so the sweep can retry it on the next run. Every alert is also a structured log
event for Azure Monitor alert rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import ConfigError, DownstreamError
from shared.expiry.model import Alert
from shared.logging import log_event
from shared.outgoing_http import NOTIFY, HttpCaller

if TYPE_CHECKING:  # requests loads lazily: indexing must stay light
    import requests

logger = logging.getLogger(__name__)

ChannelKind = Literal["teams", "slack", "json"]
ADAPTIVE_CARD_VERSION = "1.5"  # Teams Workflows renders 1.5; 1.6 features are not needed here
_COLOURS = {"info": "accent", "warning": "warning", "error": "attention", "critical": "attention"}
_SLACK_EMOJI = {"info": ":information_source:", "warning": ":warning:", "error": ":rotating_light:",
                "critical": ":rotating_light:"}  # fmt: skip


@dataclass(frozen=True)
class Channel:
    name: str  # e.g. "teams"
    kind: ChannelKind
    secret: str  # Key Vault secret holding the URL


def parse_channels(value: str) -> tuple[Channel, ...]:
    """``EXPIRY_CHANNELS``: ``kind:secret-name`` or ``name=kind:secret-name``, comma-separated."""
    channels = []
    for raw in (part.strip() for part in value.split(",")):
        if not raw:
            continue
        name, _, spec = raw.rpartition("=")
        kind, _, secret = spec.partition(":")
        if kind not in ("teams", "slack", "json") or not secret:
            raise ConfigError(
                [f"EXPIRY_CHANNELS: {raw!r} is not kind:secret-name (kind teams, slack or json), "
                 "e.g. EXPIRY_CHANNELS=teams:teams-webhook-url,slack:slack-webhook-url"]
            )  # fmt: skip
        channels.append(Channel(name or kind, kind, secret))  # type: ignore[arg-type]
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ConfigError([f"EXPIRY_CHANNELS: channel names repeat ({', '.join(names)}); name them: ops=teams:…"])
    return tuple(channels)


def adaptive_card(alert: Alert) -> dict[str, Any]:
    """The Adaptive Card alone (what the schema validates)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": alert.title, "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": _COLOURS[alert.severity]},
        {"type": "TextBlock", "text": alert.text, "wrap": True},
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in alert.facts.items()]},
    ]  # fmt: skip
    if alert.fix:
        body.append({"type": "TextBlock", "text": f"**Fix:** {alert.fix}", "wrap": True, "isSubtle": True})
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "body": body,
    }


def teams_payload(alert: Alert) -> dict[str, Any]:
    """What the Workflows "When a Teams webhook request is received" trigger accepts: a message with an
    Adaptive Card attachment (the retired connectors' MessageCard is not accepted)."""
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
             "content": adaptive_card(alert)}
        ],
    }  # fmt: skip


def slack_payload(alert: Alert) -> dict[str, Any]:
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in alert.facts.items()]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{_SLACK_EMOJI[alert.severity]} {alert.text}"}},
        {"type": "section", "fields": fields[:10]},  # Slack allows at most 10 fields per section
    ]
    if alert.fix:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"*Fix:* {alert.fix}"}]})
    return {"text": alert.title, "blocks": blocks}  # text: the notification and fallback


def json_payload(alert: Alert) -> dict[str, Any]:
    return {"source": "dvbridge", "event": "credential_expiry_alert", **alert.to_dict()}


PAYLOADS: dict[str, Callable[[Alert], dict[str, Any]]] = {
    "teams": teams_payload,
    "slack": slack_payload,
    "json": json_payload,
}


class Notifier:
    def __init__(
        self,
        channels: Sequence[Channel],
        secret: Callable[[str], str],
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.channels = tuple(channels)
        self._secret = secret
        self._caller = HttpCaller(session, NOTIFY, sleep=sleep)

    def send(self, alert: Alert, only: Sequence[str] | None = None) -> list[str]:
        """Send to every channel (or ``only`` these); return the names of those that failed."""
        log_event(
            logger,
            "credential_expiry_alert",
            logging.ERROR if alert.severity in ("error", "critical") else logging.WARNING,
            kind=alert.kind,
            threshold=alert.level,
            severity=alert.severity,
            credential=alert.credential.id,
            expires_on=alert.credential.expires_on.isoformat() if alert.credential.expires_on else "-",
            title=alert.title,
        )
        failed = []
        for channel in self.channels:
            if only is not None and channel.name not in only:
                continue
            error = self._deliver(channel, PAYLOADS[channel.kind](alert))
            if error:
                failed.append(channel.name)
                log_event(logger, "alert_channel_failed", logging.WARNING, channel=channel.name,
                          credential=alert.credential.id, error=error)  # fmt: skip
        return failed

    def _deliver(self, channel: Channel, payload: dict[str, Any]) -> str | None:
        """None when delivered, else what went wrong, in words safe to log (never the URL: it is a credential)."""
        try:
            url = self._secret(channel.secret)
        except Exception as exc:  # the URL lives in Key Vault; a missing secret fails this channel only
            return f"its URL secret {channel.secret!r} could not be read ({type(exc).__name__})"
        try:
            self._caller.send("POST", url, json=payload)
        except DownstreamError as exc:  # a refused payload fails at once; retrying now will not help
            return f"HTTP {exc.status}" if exc.status is not None else f"{exc.reason} (connection failed)"
        return None
