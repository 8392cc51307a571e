"""Microsoft Graph's application endpoints in memory, for the real ``GraphReader`` over :class:`FakeHttp`:
``GET /v1.0/applications(appId='…')`` and the paged ``GET /v1.0/applications``, honouring ``$select``,
answering Graph's error bodies, and refusing a request without a bearer token."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

from azure.core.credentials import AccessToken

from shared.graph import GraphReader
from tests.fakes.http import Answer, FakeHttp, Recorded, answer

__all__ = ["FakeGraph", "FakeTokenCredential"]

GRAPH_URL = "https://graph.microsoft.com"
FAKE_GRAPH_TOKEN = "fake-graph-token-0123456789"
_ONE_APP = re.compile(r"^/v1\.0/applications\(appId='([^']*)'\)$")


class FakeTokenCredential:
    """A ``TokenCredential``: hands out a fixed token and records the scopes asked for."""

    def __init__(self, token: str = FAKE_GRAPH_TOKEN) -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class FakeGraph:
    """App registrations as Graph returns them. ``add_app`` takes Graph's own JSON field names for the
    credentials (``keyId``, ``displayName``, ``endDateTime``, ``startDateTime``, ``hint``, ``customKeyIdentifier``)."""

    def __init__(self, http: FakeHttp, *, graph_url: str = GRAPH_URL, token: str = FAKE_GRAPH_TOKEN,
                 page_size: int = 100) -> None:  # fmt: skip
        self.graph_url = graph_url.rstrip("/")
        self.credential = FakeTokenCredential(token)
        self.page_size = page_size
        self.apps: dict[str, dict[str, Any]] = {}
        self._failure: Answer | None = None
        http.route(self.graph_url, self)

    def add_app(self, app_id: str, display_name: str, *, password_credentials: Sequence[Mapping[str, Any]] = (),
                key_credentials: Sequence[Mapping[str, Any]] = (),
                object_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        app = {
            "id": object_id or f"obj-{app_id}",
            "appId": app_id,
            "displayName": display_name,
            "passwordCredentials": [dict(p) for p in password_credentials],
            "keyCredentials": [dict(k) for k in key_credentials],
            "signInAudience": "AzureADMyOrg",  # a field $select leaves out
        }
        self.apps[app_id] = app
        return app

    def reader(self, http: FakeHttp) -> GraphReader:
        """The real GraphReader, sending through ``http`` with this fake's token credential."""
        return GraphReader(self.graph_url, self.credential, timeout_s=5, session=http.session())

    def fail(self, status: int, code: str, message: str = "") -> None:
        """Until :meth:`heal`, every request gets this Graph error."""
        self._failure = _error(status, code, message or code)

    def heal(self) -> None:
        self._failure = None

    def __call__(self, request: Recorded) -> Answer:
        if not str(request.headers.get("Authorization", "")).startswith(f"Bearer {self.credential.token}"):
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        if self._failure is not None:
            return self._failure
        path = unquote(request.path.removeprefix(urlpath(self.graph_url)))
        select = request.query.get("$select")
        one = _ONE_APP.match(path)
        if one:
            app = self.apps.get(one[1])
            if app is None:
                return _error(404, "Request_ResourceNotFound", f"Resource '{one[1]}' does not exist or one of its "
                              "queried reference-property objects are not present.")  # fmt: skip
            return answer(200, {"@odata.context": f"{self.graph_url}/v1.0/$metadata#applications/$entity",
                                **_selected(app, select)})  # fmt: skip
        if path == "/v1.0/applications":
            start = int(request.query.get("$skiptoken", "0"))
            apps = list(self.apps.values())
            selected = [_selected(a, select) for a in apps[start : start + self.page_size]]
            context = f"{self.graph_url}/v1.0/$metadata#applications"
            page: dict[str, Any] = {"@odata.context": context, "value": selected}
            if start + self.page_size < len(apps):
                page["@odata.nextLink"] = (f"{self.graph_url}/v1.0/applications?$select={quote(select or '')}"
                                           f"&$skiptoken={start + self.page_size}")  # fmt: skip
            return answer(200, page)
        return _error(400, "BadRequest", f"Resource not found for the segment '{path}'.")


def urlpath(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def _selected(app: dict[str, Any], select: str | None) -> dict[str, Any]:
    if not select:
        return dict(app)
    wanted = select.split(",")
    return {k: v for k, v in app.items() if k in wanted}


def _error(status: int, code: str, message: str) -> Answer:
    return answer(status, {"error": {"code": code, "message": message,
                                     "innerError": {"request-id": "fake", "date": "2026-01-01T00:00:00"}}})  # fmt: skip
