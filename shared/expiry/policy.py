"""The alert policy: which threshold a credential has reached, and whether that alert is due.

Each threshold is alerted exactly once per credential, in order: the state remembers the last level
notified, and a level never goes backwards. A credential first seen late (13 days left) gets the level it
is at (14d), not a burst of the ones it skipped. While acknowledged or snoozed it stays silent; when the
silence ends, the level reached in the meantime is sent once. Once expired, one escalation follows
``ESCALATE_AFTER_DAYS`` later if nobody rotated or acknowledged it. A rotated credential (a later end
date) gets one resolution notice and starts over.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from shared.expiry.model import Alert, Credential
from shared.expiry.settings import DEFAULT_THRESHOLDS_DAYS
from shared.silences import silence_reason

ESCALATE_AFTER_DAYS = 3  # expired this long and still not rotated or acknowledged: tell the escalation level
ROTATION_TOLERANCE_S = 3600  # an end date this much later than the one alerted on means a rotated credential

Severity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True)
class Level:
    name: str
    days: float  # reached when days left <= days
    severity: Severity


def levels(thresholds_days: tuple[int, ...] = DEFAULT_THRESHOLDS_DAYS) -> tuple[Level, ...]:
    """Ordered from the earliest warning to the escalation."""
    ordered = sorted(set(thresholds_days), reverse=True)
    severities: list[Severity] = ["info", "warning", "warning", "error"]
    warnings = [
        Level(f"{d}d", d, "error" if d <= 1 else severities[min(i, len(severities) - 1)]) for i, d in enumerate(ordered)
    ]
    return (*warnings, Level("expired", 0, "critical"), Level("escalated", -ESCALATE_AFTER_DAYS, "critical"))


@dataclass
class CredentialState:
    """What the monitor remembers about one credential, across runs and restarts (a Table Storage row)."""

    id: str
    first_seen: datetime
    expires_on: datetime | None = None  # the end date the last alert was about
    last_level: str | None = None
    last_notified: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_until: datetime | None = None
    snoozed_until: datetime | None = None
    drift_notified: str | None = None  # the drift finding already alerted (its text)
    undelivered: list[str] = field(default_factory=list)  # channels that failed the last alert
    etag: str | None = None

    def silenced(self, now: datetime) -> str | None:
        return silence_reason(self.acknowledged_by, self.acknowledged_until, self.snoozed_until, now)


def current_level(credential: Credential, now: datetime, table: tuple[Level, ...]) -> Level | None:
    days_left = credential.days_left(now)
    if days_left is None:
        return None
    reached = [level for level in table if days_left <= level.days]
    return reached[-1] if reached else None


def decide(
    credential: Credential, state: CredentialState, now: datetime, table: tuple[Level, ...]
) -> tuple[list[Alert], CredentialState]:
    """The alerts due now and the state to save *before* sending them (so a racing run sends nothing twice)."""
    alerts: list[Alert] = []
    new = replace(state, undelivered=list(state.undelivered))
    if (
        state.last_level is not None
        and state.expires_on is not None
        and credential.expires_on is not None
        and credential.expires_on > state.expires_on + timedelta(seconds=ROTATION_TOLERANCE_S)
    ):
        alerts.append(resolution(credential, state, now))
        new = replace(new, last_level=None, acknowledged_by=None, acknowledged_until=None, snoozed_until=None)
    new.expires_on = credential.expires_on
    level = current_level(credential, now, table)
    if level is None:
        return alerts, new
    names = [lvl.name for lvl in table]
    already = names.index(new.last_level) if new.last_level in names else -1
    if names.index(level.name) <= already or new.silenced(now):
        return alerts, new
    alerts.append(threshold_alert(credential, level, now))
    new.last_level = level.name
    new.last_notified = now
    return alerts, new


def threshold_alert(credential: Credential, level: Level, now: datetime) -> Alert:
    days_left = credential.days_left(now) or 0.0
    expires = credential.expires_on
    when = f"{expires:%Y-%m-%d %H:%M} UTC" if expires else "unknown"
    if level.name == "escalated":
        title = f"ESCALATION: {credential.describe()} expired {-days_left:.0f} days ago"
    elif level.name == "expired":
        title = f"EXPIRED: {credential.describe()}"
    else:
        title = f"{credential.describe()} expires in {max(days_left, 0):.0f} days"
    text = (
        f"{credential.describe()} expires on {when}."
        if days_left > 0
        else f"{credential.describe()} expired on {when}; anything using it now fails (AADSTS7000215 for a secret)."
    )
    return Alert(
        kind="threshold",
        level=level.name,
        severity=level.severity,
        credential=credential,
        title=title,
        text=text,
        facts=_facts(credential, now),
        fix=_fix(credential),
    )


def resolution(credential: Credential, state: CredentialState, now: datetime) -> Alert:
    before = f"{state.expires_on:%Y-%m-%d}" if state.expires_on else "unknown"
    after = f"{credential.expires_on:%Y-%m-%d}" if credential.expires_on else "none"
    return _closed(credential, now, "was rotated", f"The end date moved from {before} to {after}")


def removed(credential: Credential, state: CredentialState, now: datetime) -> Alert:
    return _closed(credential, now, "was removed", "The credential no longer exists")


def _closed(credential: Credential, now: datetime, what: str, why: str) -> Alert:
    return Alert(
        kind="resolved",
        level="resolved",
        severity="info",
        credential=credential,
        title=f"Resolved: {credential.describe()} {what}",
        text=f"{why}; the alerts about it are closed.",
        facts=_facts(credential, now),
    )


def _facts(credential: Credential, now: datetime) -> dict[str, str]:
    days_left = credential.days_left(now)
    facts = {
        "Credential": credential.name,
        "Where": credential.describe().removesuffix(f" {credential.name} ({credential.owner})"),
        "Owner": credential.owner,
        "Expires": f"{credential.expires_on:%Y-%m-%d %H:%M} UTC" if credential.expires_on else "never",
        "Days left": f"{days_left:.1f}" if days_left is not None else "-",
    }
    if credential.key_id:
        facts["Entra keyId"] = credential.key_id
    return facts


def _fix(credential: Credential) -> str:
    if credential.source in ("entra-password", "keyvault-secret"):
        return (
            "Add a new client secret to the app registration (Certificates & secrets), store it as a new version"
            " of the Key Vault secret with its end date as the expiry and the tag entraKeyId=<keyId>, then delete"
            " the old Entra secret."
        )
    return (
        "Upload a new certificate to the app registration, import it into Key Vault (new version), then remove"
        " the old certificate from the app."
    )
