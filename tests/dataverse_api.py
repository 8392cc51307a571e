"""One authenticated caller of the Dataverse emulator for the integration tests (raw requests)."""

from __future__ import annotations

from typing import Any

import requests

from tests.devstack_process import DevstackProcess

STANDARD_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
}


class DataverseApi:
    """``api(method, path, **kwargs)`` against ``<DATAVERSE_URL>/api/data/v9.2/<path>`` with a bearer token."""

    def __init__(self, stack: DevstackProcess, token: str) -> None:
        self.org = stack.env["DATAVERSE_URL"]
        self.root = f"{self.org}/api/data/v9.2"
        # Passed per request: requests lets REQUESTS_CA_BUNDLE override Session.verify.
        self.verify = stack.env["REQUESTS_CA_BUNDLE"]
        self.session = requests.Session()
        self.session.headers.update({**STANDARD_HEADERS, "Authorization": f"Bearer {token}"})

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("https://") else f"{self.root}/{path}"
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, url, verify=self.verify, **kwargs)

    def control(self, payload: dict[str, Any]) -> None:
        requests.post(f"{self.org}/_devstack/control", json=payload, verify=self.verify, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.org}/_devstack/stats", verify=self.verify, timeout=10)
        return dict(response.json())


def api_for(stack: DevstackProcess) -> DataverseApi:
    """A caller authenticated as the app the current environment (app_env) names."""
    from shared.composition import dataverse_token

    return DataverseApi(stack, dataverse_token().value)
