"""Microsoft Graph, as far as dvbridge uses it: app registrations and their credentials. Reading them (the
expiry sweep's Entra inventory, the doctor's end date of the credential in use) needs the Graph application
permission Application.Read.All; adding and removing the app's own credentials (rotation) needs
Application.ReadWrite.OwnedBy and the managed identity as an owner of the registration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.errors import AuthError, DownstreamError
from shared.outgoing_http import GRAPH, HttpCaller

if TYPE_CHECKING:  # requests loads lazily: indexing must stay light
    import requests

GRAPH_SELECT = "id,appId,displayName,passwordCredentials,keyCredentials"
# The audience Graph requires in an addKey/removeKey proof of possession (Azure AD Graph's app id).
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"
PROOF_LIFETIME_S = 600  # Graph accepts a proof valid for at most 10 minutes
ENTRA_KEY_ID_TAG = "entraKeyId"  # Key Vault tag naming the Entra passwordCredential a secret is a copy of


def graph_time(value: str) -> datetime:
    """A Graph ``endDateTime`` (ISO 8601, ``Z`` or an offset, at times none: read as UTC)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class GraphReader:
    """App registrations' credentials. Needs the Graph application permission Application.Read.All.

    ``timeout_s`` is the HTTP_TIMEOUT_S setting (``Settings.http_timeout_s``); the GRAPH policy of
    shared.outgoing_http retries Graph's throttling and outages."""

    def __init__(
        self, graph_url: str, credential: Any, *, timeout_s: float, session: requests.Session | None = None
    ) -> None:
        self.graph_url = graph_url.rstrip("/")
        self._credential = credential
        self._caller = HttpCaller(session, GRAPH.with_timeout(timeout_s))

    def _get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._send("GET", url, params=params)

    def _send(
        self, method: str, url: str, *, params: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        from shared.identity.diagnosis import diagnose

        token = self._credential.get_token(f"{self.graph_url}/.default").token
        try:
            response = self._caller.send(
                method,
                url,
                params=params,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                raise_for_status=False,
            )
        except DownstreamError as exc:  # no answer: reported like any other Graph failure, the sweep goes on
            raise AuthError(
                "GraphUnreachable",
                cause=str(exc),
                fix="Check outbound HTTPS from the function app to GRAPH_URL.",
                step="graph",
                retryable=exc.retryable,
            ) from None
        if response.status_code not in (200, 201, 204):
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error.get("message") or "")
            except (ValueError, KeyError, TypeError):
                code, message = f"HTTP {response.status_code}", ""
            found = diagnose(code, identity="the function app's managed identity")
            cause = f"{found.cause} (Graph: {message[:200]})" if message else found.cause
            raise AuthError(
                code,
                cause=cause,
                fix=found.fix,
                step="graph",
                status=response.status_code,
                retryable=response.status_code in GRAPH.retry_statuses,
            )
        return dict(response.json()) if response.content else {}

    def application(self, app_id: str, select: str = GRAPH_SELECT) -> dict[str, Any]:
        """One app registration by its appId (client id)."""
        return self._get(f"{self.graph_url}/v1.0/applications(appId='{app_id}')", {"$select": select})

    def owners(self, app_id: str) -> list[str]:
        """The object ids of the app registration's owners (users and service principals)."""
        body = self._get(f"{self.graph_url}/v1.0/applications(appId='{app_id}')/owners", {"$select": "id"})
        return [str(owner["id"]) for owner in body.get("value", []) if owner.get("id")]

    def applications(self, app_ids: Sequence[str]) -> Iterator[dict[str, Any]]:
        """The named apps, or every app the identity can read when ``app_ids`` is ``("*",)``."""
        if tuple(app_ids) == ("*",):
            page: dict[str, Any] | None = self._get(f"{self.graph_url}/v1.0/applications", {"$select": GRAPH_SELECT})
            while page is not None:
                yield from page.get("value", [])
                next_link = page.get("@odata.nextLink")
                page = self._get(str(next_link)) if next_link else None
            return
        for app_id in app_ids:
            yield self.application(app_id)


class GraphApplications(GraphReader):
    """Reads app registrations, and adds and removes the app's own credentials (rotation). Writes are never
    resent after a broken connection (the GRAPH policy): a lost addPassword answer leaves a password whose
    text nobody holds, which the rotation finds by its display name and removes."""

    def _app(self, app_id: str) -> str:
        return f"{self.graph_url}/v1.0/applications(appId='{app_id}')"

    def add_password(self, app_id: str, display_name: str, end: datetime) -> dict[str, Any]:
        """A new client secret; the answer holds its text (``secretText``), the only time Graph shows it."""
        body = {"passwordCredential": {"displayName": display_name, "endDateTime": _graph_iso(end)}}
        return self._send("POST", f"{self._app(app_id)}/addPassword", body=body)

    def remove_password(self, app_id: str, key_id: str) -> None:
        self._send("POST", f"{self._app(app_id)}/removePassword", body={"keyId": key_id})

    def add_key(self, app_id: str, certificate_der: bytes, display_name: str, proof: str) -> dict[str, Any]:
        """Upload a certificate's public part; ``proof`` is signed with a certificate the app already has."""
        import base64

        key = {"type": "AsymmetricX509Cert", "usage": "Verify", "displayName": display_name,
               "key": base64.b64encode(certificate_der).decode()}  # fmt: skip
        body = {"keyCredential": key, "passwordCredential": None, "proof": proof}
        return self._send("POST", f"{self._app(app_id)}/addKey", body=body)

    def remove_key(self, app_id: str, key_id: str, proof: str) -> None:
        self._send("POST", f"{self._app(app_id)}/removeKey", body={"keyId": key_id, "proof": proof})


def possession_proof(object_id: str, private_key_pem: str, certificate_sha1: bytes, now: float) -> str:
    """The proof-of-possession token addKey and removeKey require: signed with the private key of a
    certificate the application already has, naming the application's object id as its issuer."""
    import base64

    import jwt

    claims = {"aud": PROOF_AUDIENCE, "iss": object_id, "nbf": int(now), "exp": int(now) + PROOF_LIFETIME_S}
    x5t = base64.urlsafe_b64encode(certificate_sha1).decode().rstrip("=")
    return jwt.encode(claims, private_key_pem, algorithm="RS256", headers={"x5t": x5t})


def _graph_iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
