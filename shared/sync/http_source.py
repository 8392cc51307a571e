"""A paged HTTP JSON API as a sync source: page-number, cursor or next-link paging, an auth header whose
value is a Key Vault secret, retries under the SOURCE_API policy (shared.outgoing_http: the API's own 429s
honoured), and an optional watermark parameter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from shared.errors import ConfigError, DownstreamError
from shared.outgoing_http import SOURCE_API, HttpCaller
from shared.outgoing_http import origin as origin_of
from shared.sync.jobs import HttpSource
from shared.sync.rows import SourceRow

HTTP_OK = 200
MAX_PAGES = 100_000  # a guard against an API that never stops paging


def iter_http(
    source: HttpSource,
    *,
    secret: Callable[[str], str] | None = None,
    watermark: str | None = None,
    session: requests.Session | None = None,
    caller: HttpCaller | None = None,
) -> Iterator[SourceRow]:
    caller = caller or HttpCaller(session or requests.Session(), SOURCE_API)
    headers = {"Accept": "application/json"}
    if source.auth_header and source.auth_secret:
        if secret is None:
            raise ConfigError([f"the source {source.url} names auth_secret {source.auth_secret!r}, but no secret store "
                               "was given to read it"])  # fmt: skip
        headers[source.auth_header] = secret(source.auth_secret)
    params: dict[str, str] = {}
    if source.watermark_param and watermark:
        params[source.watermark_param] = watermark
    url: str | None = source.url
    page, line = 1, 0
    for _ in range(MAX_PAGES):
        if url is None:
            return
        if source.paging == "page_number":
            params[source.page_param] = str(page)
        payload = _get(caller, url, headers, params)
        items = payload.get(source.items_field) or []
        for item in items:
            line += 1
            yield SourceRow(source.url, "", line, item if isinstance(item, dict) else {"__value__": item})
        if source.paging == "page_number":
            url = source.url if items else None
            page += 1
        elif source.paging == "cursor":
            cursor = payload.get(source.cursor_field)
            if not cursor:
                return
            params[source.cursor_param] = str(cursor)
        else:
            url = _same_origin(source.url, payload.get(source.next_link_field) or None)
            params = {}  # a next link carries its own query


def _same_origin(base: str, link: Any) -> str | None:
    """The API's next link, resolved against its URL; a link to another origin is refused, because every
    request carries the source's auth header (a Key Vault secret) and must never reach another host."""
    if link is None:
        return None
    resolved = urljoin(base, str(link))
    origin, target = urlsplit(base), urlsplit(resolved)
    if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
        raise DownstreamError(
            SOURCE_API.name,
            f"{origin.scheme}://{origin.netloc}",
            HTTP_OK,  # the page came; its link is what is refused
            retryable=False,
            reason=f"a next link that leaves {origin.scheme}://{origin.netloc}",
            context="refused, so the auth header is never sent elsewhere",
        )
    return resolved


def _get(caller: HttpCaller, url: str, headers: dict[str, str], params: dict[str, str]) -> dict[str, Any]:
    response = caller.send("GET", url, headers=headers, params=params or None)
    try:
        body = response.json()
    except ValueError:  # requests' JSONDecodeError: the API answered, but not with JSON
        raise DownstreamError(
            SOURCE_API.name, origin_of(url), response.status_code, retryable=False, reason="a body that is not JSON"
        ) from None
    return body if isinstance(body, dict) else {"items": body}
