"""A paged HTTP JSON API as a sync source: page-number, cursor or next-link paging, an auth header whose
value is a Key Vault secret, the API's own 429s honoured, and an optional watermark parameter."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from shared.logging import log_event
from shared.sync.jobs import HttpSource
from shared.sync.storage import SourceRow

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_S = 1.0
MAX_PAGES = 100_000  # a guard against an API that never stops paging


def iter_http(
    source: HttpSource,
    *,
    secret: Callable[[str], str] | None = None,
    watermark: str | None = None,
    session: requests.Session | None = None,
) -> Iterator[SourceRow]:
    session = session or requests.Session()
    headers = {"Accept": "application/json"}
    if source.auth_header and source.auth_secret:
        if secret is None:
            raise ValueError("this source needs a secret store for its auth header")
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
        payload = _get(session, url, headers, params)
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
        raise ValueError(
            f"the source API's next link leaves {origin.scheme}://{origin.netloc}; "
            "refused, so the auth header is never sent elsewhere"
        )
    return resolved


def _get(session: requests.Session, url: str, headers: dict[str, str], params: dict[str, str]) -> dict[str, Any]:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = session.get(url, headers=headers, params=params or None, timeout=60)
        except (requests.ConnectionError, requests.Timeout):
            response = None
        if response is not None and response.status_code < 400:
            body = response.json()
            return body if isinstance(body, dict) else {"items": body}
        retryable = response is None or response.status_code in (429, 500, 502, 503, 504)
        if not retryable or attempt == MAX_ATTEMPTS:
            status = response.status_code if response is not None else "no response"
            raise RuntimeError(f"source API {url} answered {status}")
        retry_after = response.headers.get("Retry-After") if response is not None else None
        wait = (
            float(retry_after)
            if retry_after and retry_after.replace(".", "", 1).isdigit()
            else BACKOFF_S * 2 ** (attempt - 1)
        )
        log_event(
            logger, "sync_source_retry", status=response.status_code if response is not None else "error", wait_s=wait
        )
        time.sleep(wait)
    raise AssertionError("unreachable")
