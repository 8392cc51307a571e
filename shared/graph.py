"""Microsoft Graph, as far as dvbridge reads it: app registrations and their credentials (the expiry
sweep's Entra inventory, the doctor's end date of the credential in use). Needs the Graph application
permission Application.Read.All for the managed identity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.errors import AuthError, DownstreamError
from shared.outgoing_http import GRAPH, HttpCaller

if TYPE_CHECKING:  # requests loads lazily: indexing must stay light
    import requests

GRAPH_SELECT = "id,appId,displayName,passwordCredentials,keyCredentials"
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
        from shared.identity.diagnosis import diagnose

        token = self._credential.get_token(f"{self.graph_url}/.default").token
        try:
            response = self._caller.send(
                "GET", url, params=params, headers={"Authorization": f"Bearer {token}"}, raise_for_status=False
            )
        except DownstreamError as exc:  # no answer: reported like any other Graph failure, the sweep goes on
            raise AuthError(
                "GraphUnreachable",
                cause=str(exc),
                fix="Check outbound HTTPS from the function app to GRAPH_URL.",
                step="graph",
                retryable=exc.retryable,
            ) from None
        if response.status_code != 200:
            try:
                code = str(response.json()["error"]["code"])
            except (ValueError, KeyError, TypeError):
                code = f"HTTP {response.status_code}"
            found = diagnose(code, identity="the function app's managed identity")
            raise AuthError(code, cause=found.cause, fix=found.fix, step="graph", status=response.status_code)
        return dict(response.json())

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
