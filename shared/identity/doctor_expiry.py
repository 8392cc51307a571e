"""The doctor's credential-expiry step: the soonest end date of the Dataverse credential in use, from Key
Vault's expiry, the certificate's notAfter and Entra's end date (read through Graph), with a warning when
Key Vault and Entra disagree."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from shared.config import Settings
from shared.errors import AuthError
from shared.graph import ENTRA_KEY_ID_TAG, graph_time
from shared.identity.doctor_report import StepResult

EXPIRY_WARNING_DAYS = 30
SECONDS_PER_DAY = 86400


def expiry_step(
    settings: Settings, credential: Any, secret: Any, dv_credential: Any, now: float, drift_tolerance_s: float
) -> StepResult:
    ends: list[tuple[str, datetime]] = []
    if secret.expires_on is not None:
        ends.append(("Key Vault exp", secret.expires_on))
    if dv_credential.not_after is not None:
        ends.append(("certificate notAfter", dv_credential.not_after))
    entra_end, graph_note = _entra_end_date(settings, credential, secret, dv_credential)
    if entra_end is not None:
        ends.append(("Entra endDateTime", entra_end))
    if not ends:
        return StepResult(
            "credential expiry",
            "warn",
            "no expiry date known",
            cause="The Key Vault object has no expiry date and Entra could not be read."
            + (f" {graph_note}" if graph_note else ""),
            fix="Set the secret's expiry date in Key Vault to the Entra secret's end date.",
        )
    label, soonest = min(ends, key=lambda item: item[1])
    days = (soonest.timestamp() - now) / SECONDS_PER_DAY
    details = {name: value.isoformat() for name, value in ends}
    drift = None
    kv_exp = secret.expires_on
    if (
        entra_end is not None
        and kv_exp is not None
        and abs(kv_exp.timestamp() - entra_end.timestamp()) > drift_tolerance_s
    ):
        drift = (
            f"Key Vault says {kv_exp:%Y-%m-%d} but Entra ends the credential {entra_end:%Y-%m-%d}: Entra's date is the"
            " one that stops authentication."
        )
    if days <= 0:
        return StepResult(
            "credential expiry",
            "fail",
            f"expired {-days:.0f} day(s) ago ({label} {soonest:%Y-%m-%d})",
            "CredentialExpired",
            "The Dataverse credential is past its end date.",
            "Rotate it: new secret or certificate in Entra, new version in Key Vault with the new expiry date.",
            details,
        )
    note = f"{label} {soonest:%Y-%m-%d}, in {days:.0f} day(s)"
    if graph_note:
        note += f"; {graph_note}"
    if days <= EXPIRY_WARNING_DAYS or drift:
        return StepResult(
            "credential expiry",
            "warn",
            note,
            "CredentialExpiringSoon" if days <= EXPIRY_WARNING_DAYS else "ExpiryDrift",
            drift or f"The credential expires within {EXPIRY_WARNING_DAYS} days.",
            "Rotate the credential before it expires and store the new end date in Key Vault.",
            details,
        )
    return StepResult("credential expiry", "ok", note, details=details)


def _entra_end_date(
    settings: Settings, credential: Any, secret: Any, dv_credential: Any
) -> tuple[datetime | None, str]:
    """The Entra end date of the credential in use, via Graph; ``(None, why)`` when unavailable."""
    from shared.graph import GraphReader

    graph = GraphReader(settings.graph_url, credential, timeout_s=settings.http_timeout_s)
    try:
        app = graph.application(settings.client_id, select="appId,passwordCredentials,keyCredentials")
    except AuthError as exc:  # Graph is optional for the doctor: report and move on
        return None, f"Entra credentials not checked ({exc.code}: {exc.fix})"
    except Exception as exc:
        return None, f"Entra credentials not checked ({type(exc).__name__})"
    if dv_credential.kind == "certificate":
        wanted = bytes.fromhex(dv_credential.thumbprint or "")
        for key in app.get("keyCredentials", []):
            try:
                if base64.b64decode(key.get("customKeyIdentifier") or "") == wanted:
                    return graph_time(key["endDateTime"]), ""
            except ValueError:
                continue
        return None, "certificate not found among the app's keyCredentials"
    passwords = app.get("passwordCredentials", [])
    key_id = (secret.tags or {}).get(ENTRA_KEY_ID_TAG)
    match = next((p for p in passwords if key_id and p.get("keyId") == key_id), None)
    if match is None:
        hint = (dv_credential.secret or "")[:3]
        hinted = [p for p in passwords if p.get("hint") == hint]
        match = hinted[0] if len(hinted) == 1 else None
    if match is None:
        return None, "no Entra secret matched (tag the Key Vault secret with entraKeyId=<keyId>)"
    return graph_time(match["endDateTime"]), ""
