"""The HTTP source follows only next links on its own origin: every request carries the source's auth
header (a Key Vault secret), so a link to another host, from a compromised or confused API, is refused."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from shared.errors import DownstreamError
from shared.sync.http_source import iter_http
from shared.sync.jobs import HttpSource

pytestmark = pytest.mark.unit
ORIGIN = "https://erp.example"


class _Api(requests.Session):
    def __init__(self, pages: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.pages = pages
        self.sent: list[tuple[str, str | None]] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append((str(url), kwargs["headers"].get("X-Api-Key")))
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(self.pages[str(url)]).encode()
        return response


def source() -> HttpSource:
    return HttpSource(
        kind="http_json", url="https://erp.example/api/customers", auth_header="X-Api-Key", auth_secret="k"
    )


@pytest.mark.parametrize(
    "link",
    [
        "https://attacker.example/steal",
        "//attacker.example/x",
        "http://erp.example/api/customers?p=2",
        "https://erp.example:8443/x",
    ],
)
def test_a_next_link_to_another_origin_is_refused_before_the_secret_is_sent(link: str) -> None:
    api = _Api({"https://erp.example/api/customers": {"items": [{"no": 1}], "next": link}})
    rows = iter_http(source(), secret=lambda _: "the-api-key", session=api)
    assert next(rows).values == {"no": 1}
    with pytest.raises(DownstreamError, match=re.escape(f"next link that leaves {ORIGIN}")):
        next(rows)
    assert [url for url, _ in api.sent] == ["https://erp.example/api/customers"]


def test_a_relative_next_link_is_followed_on_the_same_origin() -> None:
    api = _Api(
        {
            "https://erp.example/api/customers": {"items": [{"no": 1}], "next": "/api/customers?from=1"},
            "https://erp.example/api/customers?from=1": {"items": [{"no": 2}]},
        }
    )
    rows = [row.values for row in iter_http(source(), secret=lambda _: "the-api-key", session=api)]
    assert rows == [{"no": 1}, {"no": 2}]
    assert [url for url, _ in api.sent] == [
        "https://erp.example/api/customers",
        "https://erp.example/api/customers?from=1",
    ]
