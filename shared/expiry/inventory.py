"""Where credentials are listed: Key Vault (properties only), Entra app registrations via Graph, and the
correlation between the two (a Key Vault secret tagged with its Entra credential's keyId, or matched by the
three-character ``hint``), with the drift findings that follow."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.expiry.model import Credential
from shared.expiry.settings import DEFAULT_DRIFT_TOLERANCE_S
from shared.graph import ENTRA_KEY_ID_TAG, graph_time


def vault_credentials(store: Any, vault: str) -> list[Credential]:
    """Secrets and certificates of the vault, from their properties (values are never read here)."""
    found = []
    for p in store.list_secret_properties():
        if getattr(p, "managed", False) or p.enabled is False:
            continue  # a certificate's backing secret is reported as the certificate
        found.append(
            Credential(
                id=f"kv-secret:{vault}:{p.name}",
                name=p.name,
                source="keyvault-secret",
                expires_on=p.expires_on,
                owner=f"vault {vault}",
                key_id=(p.tags or {}).get(ENTRA_KEY_ID_TAG),
                created_on=p.updated_on or p.created_on,
            )
        )
    for p in store.list_certificate_properties():
        if p.enabled is False:
            continue
        thumbprint = p.x509_thumbprint.hex() if p.x509_thumbprint else None
        found.append(
            Credential(
                id=f"kv-certificate:{vault}:{p.name}",
                name=p.name,
                source="keyvault-certificate",
                expires_on=p.expires_on,
                owner=f"vault {vault}",
                created_on=p.updated_on or p.created_on,
                extra={"thumbprint": thumbprint} if thumbprint else {},
            )
        )
    return found


def _graph_time(value: str | None) -> datetime | None:
    return graph_time(value) if value else None


def entra_credentials(apps: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[Credential]:
    found = []
    for app in apps:
        app_id = str(app.get("appId"))
        owner = f"app {app.get('displayName')} ({app_id})"
        for p in app.get("passwordCredentials") or []:
            key_id = str(p.get("keyId"))
            found.append(
                Credential(
                    id=f"entra-password:{app_id}:{key_id}",
                    name=str(p.get("displayName") or key_id),
                    source="entra-password",
                    expires_on=_graph_time(p.get("endDateTime")),
                    owner=owner,
                    key_id=key_id,
                    hint=p.get("hint"),
                    created_on=_graph_time(p.get("startDateTime")),
                    extra={"app_id": app_id},
                )
            )
        for k in app.get("keyCredentials") or []:
            key_id = str(k.get("keyId"))
            try:
                thumbprint = base64.b64decode(k.get("customKeyIdentifier") or "").hex() or None
            except ValueError:
                thumbprint = None
            found.append(
                Credential(
                    id=f"entra-certificate:{app_id}:{key_id}",
                    name=str(k.get("displayName") or key_id),
                    source="entra-certificate",
                    expires_on=_graph_time(k.get("endDateTime")),
                    owner=owner,
                    key_id=key_id,
                    created_on=_graph_time(k.get("startDateTime")),
                    extra={"app_id": app_id, **({"thumbprint": thumbprint} if thumbprint else {})},
                )
            )
    return found


@dataclass(frozen=True)
class Drift:
    vault_copy: Credential
    entra: Credential | None
    text: str


def drift_findings(
    credentials: Sequence[Credential],
    *,
    hints: dict[str, str] | None = None,
    tolerance_s: float = DEFAULT_DRIFT_TOLERANCE_S,
) -> list[Drift]:
    """Key Vault copies whose Entra credential disagrees: a different end date (beyond the tolerance), a
    keyId no longer on the app, or an app that has a newer credential than the copy. ``hints`` maps a
    Key Vault secret name to the first three characters of its value, for untagged copies."""
    entra = {c.key_id: c for c in credentials if c.source == "entra-password" and c.key_id}
    findings = []
    for copy in (c for c in credentials if c.source == "keyvault-secret"):
        match = entra.get(copy.key_id) if copy.key_id else None
        if copy.key_id and match is None:
            findings.append(Drift(copy, None, f"{copy.describe()} is tagged {ENTRA_KEY_ID_TAG}={copy.key_id}, "
                                              "which no app registration has (deleted or mistyped)"))  # fmt: skip
            continue
        if match is None and hints and copy.name in hints:
            hinted = [e for e in entra.values() if e.hint and e.hint == hints[copy.name]]
            match = hinted[0] if len(hinted) == 1 else None
        if match is None:
            continue
        kv_end, entra_end = copy.expires_on, match.expires_on
        if entra_end is not None and (kv_end is None or abs((kv_end - entra_end).total_seconds()) > tolerance_s):
            kv_text = f"{kv_end:%Y-%m-%d}" if kv_end else "no expiry"
            text = f"{copy.describe()} says it expires {kv_text}, but {match.describe()}"
            findings.append(Drift(copy, match, f"{text} (keyId {match.key_id}) ends {entra_end:%Y-%m-%d}"))
            continue
        newer = [
            e for e in entra.values()
            if e.owner == match.owner and e.created_on and match.created_on and e.created_on > match.created_on
        ]  # fmt: skip
        if newer:
            newest = max(newer, key=lambda e: e.created_on or match.created_on)  # type: ignore[arg-type,return-value]
            text = f"{copy.describe()} holds {match.describe()}, but the app has a newer secret {newest.name}"
            created = f"{newest.created_on:%Y-%m-%d}"
            findings.append(
                Drift(copy, match, f"{text} (keyId {newest.key_id}, created {created}) that Key Vault does not hold")
            )
    return findings
