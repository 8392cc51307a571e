"""The paged HTTP JSON source: three paging styles, an auth header from Key Vault, the API's 429 honoured,
and a watermark that makes the next run ask only for newer rows."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.composition import secret_store, token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.storage import Storage
from shared.sync.engine import SyncContext, run_inbound
from shared.sync.jobs import InboundJob
from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.e2e

ROTATION_ADMIN = "6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31"  # default scenario: Key Vault Secrets Officer


class ErpApi:
    """Customers updated at increasing times; pages of 7; the first request of a run is throttled."""

    def __init__(self, key: str, prefix: str) -> None:
        self.key, self.prefix = key, prefix
        self.customers = [
            {"no": f"{prefix}{i:03}", "name": f"Api {i}", "updated": f"2026-01-01T00:{i:02}:00Z"} for i in range(40)
        ]
        self.requests: list[dict[str, list[str]]] = []
        self.throttle_next = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                api.requests.append(query)
                if self.headers.get("X-Api-Key") != api.key:
                    return self._send(401, {"error": "bad key"})
                if api.throttle_next:
                    api.throttle_next = False
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
                since = query.get("since", [""])[0]
                rows = [c for c in api.customers if c["updated"] > since]
                style = urlsplit(self.path).path.strip("/")
                if style == "pages":
                    page = int(query.get("page", ["1"])[0])
                    return self._send(200, {"items": rows[(page - 1) * 7 : page * 7]})
                start = int(query.get("cursor", query.get("from", ["0"]))[0])
                body: dict[str, Any] = {"items": rows[start : start + 7]}
                if start + 7 < len(rows):
                    body["next_cursor" if style == "cursor" else "next"] = (
                        str(start + 7)
                        if style == "cursor"
                        else f"http://127.0.0.1:{api.port}/links?from={start + 7}&since={since}"
                    )
                return self._send(200, body)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("http"),
        "http",
        "--memory",
        "--time-scale",
        "0.01",
    )
    yield process
    process.stop()


@pytest.mark.parametrize("style", ["pages", "cursor", "links"])
def test_paged_api_with_key_vault_auth_429_and_watermark(stack, app_env, style: str) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    settings = app_env(stack)
    prefix = f"H{uuid.uuid4().hex[:4]}"
    key = uuid.uuid4().hex
    SecretClient(
        settings["KEY_VAULT_URL"], ManagedIdentityCredential(client_id=ROTATION_ADMIN), verify_challenge_resource=False
    ).set_secret("erp-api-key", key)
    api = ErpApi(key, prefix)
    paging = {"pages": "page_number", "cursor": "cursor", "links": "next_link"}[style]
    job = InboundJob.model_validate(
        {
            "direction": "inbound",
            "source": {
                "kind": "http_json",
                "url": f"http://127.0.0.1:{api.port}/{style}",
                "paging": paging,
                "auth_header": "X-Api-Key",
                "auth_secret": "erp-api-key",
                "watermark_param": "since",
            },
            "table": "account",
            "entity_set": "accounts",
            "key": ["accountnumber"],
            "mapping": {"accountnumber": {"source": "no"}, "name": {"source": "name"}},
            "watermark_field": "updated",
        }
    )
    client = DataverseClient(
        settings["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=settings["REQUESTS_CA_BUNDLE"])
    )
    ctx = SyncContext(
        Storage(settings["AzureWebJobsStorage"]), client, secret=lambda name: secret_store().get(name).value
    )
    name = f"erp-api-{prefix}"

    first = run_inbound(name, job, ctx)
    assert (first.status, first.rows_read, first.written) == ("succeeded", 40, 40)
    assert ctx.storage.get_state(name, "watermark") == "2026-01-01T00:39:00Z"

    api.customers.append({"no": f"{prefix}new", "name": "Newer", "updated": "2026-01-02T00:00:00Z"})
    api.throttle_next = True
    second = run_inbound(name, job, ctx)
    assert (second.rows_read, second.written) == (1, 1)  # only what changed since the watermark
    assert api.requests[-1].get("since") == ["2026-01-01T00:39:00Z"]
    found = api_for(stack)(
        "GET", "accounts", params={"$select": "accountnumber", "$filter": f"startswith(accountnumber,'{prefix}')"}
    ).json()["value"]
    assert len(found) == 41
