"""What the monitor knows about one credential, and the alerts it decides to send."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Source = Literal["keyvault-secret", "keyvault-certificate", "entra-password", "entra-certificate", "probe"]
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Credential:
    """One credential with an end date. ``id`` is stable across runs and safe in a URL path and a table key."""

    id: str
    name: str
    source: Source
    expires_on: datetime | None
    owner: str  # the vault name, or the app's display name and appId
    key_id: str | None = None  # Entra keyId (of the credential, or the one a Key Vault secret is tagged with)
    hint: str | None = None  # Entra: first three characters of the secret
    created_on: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def days_left(self, now: datetime) -> float | None:
        if self.expires_on is None:
            return None
        return (self.expires_on - now).total_seconds() / SECONDS_PER_DAY

    def describe(self) -> str:
        labels = {
            "keyvault-secret": "Key Vault secret",
            "keyvault-certificate": "Key Vault certificate",
            "entra-password": "Entra client secret",
            "entra-certificate": "Entra certificate",
            "probe": "live credential probe",
        }
        return f"{labels[self.source]} {self.name} ({self.owner})"


AlertKind = Literal["threshold", "drift", "resolved", "probe_failed", "probe_recovered", "rotation"]


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    level: str  # threshold name ("30d", "expired", "escalated"…), or the kind for the others
    severity: Literal["info", "warning", "error", "critical"]
    credential: Credential
    title: str
    text: str
    facts: dict[str, str]
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        expires = self.credential.expires_on
        return {
            "kind": self.kind,
            "level": self.level,
            "severity": self.severity,
            "credential": {
                "id": self.credential.id,
                "name": self.credential.name,
                "source": self.credential.source,
                "owner": self.credential.owner,
                "key_id": self.credential.key_id,
                "expires_on": expires.isoformat() if expires else None,
            },
            "title": self.title,
            "text": self.text,
            "facts": self.facts,
            "fix": self.fix,
        }
