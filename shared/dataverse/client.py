"""``DataverseClient``: one pooled session per worker, the standard headers, retries through the outgoing
HTTP layer (shared.outgoing_http, DATAVERSE policy) with the throttle governor, one token refresh on 401,
reads (by id, by key, queries, paging, WhoAmI, change tracking), single writes, ``$batch`` and bulk messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from shared import __version__
from shared.dataverse.addressing import (
    KeyValueRefused,
    entity_path,
    identifier,
    key_filter,
    needs_query_addressing,
)
from shared.dataverse.batch_codec import BatchItem, OperationResult, decode_batch, encode_batch, match_results
from shared.dataverse.governor import ThrottleGovernor
from shared.dataverse.wire import (
    DeltaPage,
    NoCookies,
    TokenSource,
    alike,
    error_from,
    primary_id,
    throttled_from,
    within,
    writable,
)
from shared.errors import DataverseError, DownstreamError
from shared.logging import log_event
from shared.outgoing_http import DATAVERSE, HttpCaller, RetryNotice, RetryPolicy
from shared.telemetry import operation_name, record_dataverse_response, span

logger = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2"
USER_AGENT = f"dvbridge/{__version__}"
BULK_READ_TIMEOUT_S = 180.0  # bulk messages and large batches run for minutes on real environments
MAX_PAGE_SIZE = 5000
DUPLICATE_KEY_CODE = "0x80060892"  # "Entity Key … violated": another writer created this key first
RECORD_NOT_FOUND_CODE = "0x80040217"  # Dataverse's "Does Not Exist"
QUERY_ADDRESSING_ATTEMPTS = 3  # find-then-write rounds before concurrent writers are reported


@dataclass
class ClientOptions:
    max_concurrency: int = 8
    affinity_cookie: bool = False  # off: requests spread over web servers, each with its own limits
    bypass_custom_plugins: bool = False
    suppress_duplicate_detection: bool | None = None
    caller_object_id: str | None = None
    policy: RetryPolicy = DATAVERSE  # PROBE for the doctor: one attempt
    max_attempts: int | None = None  # None: the policy's
    retry_deadline_s: float | None = None  # None: the policy's
    verify: str | bool | None = None  # None: requests' default (honours REQUESTS_CA_BUNDLE)
    extra_headers: dict[str, str] = field(default_factory=dict)


class DataverseClient:
    def __init__(
        self,
        org_url: str,
        tokens: TokenSource,
        *,
        session: requests.Session | None = None,
        options: ClientOptions | None = None,
        governor: ThrottleGovernor | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.org_url = org_url.rstrip("/")
        self.root = f"{self.org_url}{API_PATH}"
        self.options = options or ClientOptions()
        self.tokens = tokens
        self.governor = governor or ThrottleGovernor(self.options.max_concurrency)
        self.session = session or self._new_session()
        policy = self.options.policy
        if self.options.max_attempts is not None:
            policy = replace(policy, attempts=self.options.max_attempts)
        if self.options.retry_deadline_s is not None:
            policy = replace(policy, deadline_s=self.options.retry_deadline_s)
        self._caller = HttpCaller(
            self.session, policy, attempt_context=self.governor.slot, on_retry=self._paused_for, sleep=sleep
        )
        self._token = tokens.token_for_invocation()

    @property
    def requests_sent(self) -> int:
        """Requests put on the wire, every attempt and resend counted."""
        return self._caller.requests_sent

    def __repr__(self) -> str:
        return f"DataverseClient(org_url={self.org_url!r})"

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        size = max(self.options.max_concurrency, 1) + 2
        adapter = HTTPAdapter(pool_connections=size, pool_maxsize=size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        if not self.options.affinity_cookie:
            session.cookies.set_policy(NoCookies())
        return session

    # -- the one request path -----------------------------------------------------------------------
    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "If-None-Match": "null",
            "User-Agent": USER_AGENT,
            "Authorization": f"Bearer {self._token.value}",
            **self.options.extra_headers,
        }
        if self.options.bypass_custom_plugins:
            headers["MSCRM.BypassCustomPluginExecution"] = "true"
        if self.options.suppress_duplicate_detection is not None:
            headers["MSCRM.SuppressDuplicateDetection"] = str(self.options.suppress_duplicate_detection).lower()
        if self.options.caller_object_id:
            headers["CallerObjectId"] = self.options.caller_object_id
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        long_running: bool = False,
        raise_for_status: bool = True,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send under the client's retry policy (429/502/503/504 and connection errors; the server's wait
        honoured once, by the governor on a 429); refresh the token once on 401."""
        url = path if path.startswith("https://") or path.startswith("http://") else f"{self.root}/{path.lstrip('/')}"
        if not within(url, self.root):
            # A next or delta link names another host: never send it our bearer token.
            raise DataverseError(0, "ForeignUrl", f"refused to send a Dataverse request outside {self.root}")
        policy = self._caller.policy
        timeout = (policy.connect_timeout_s, BULK_READ_TIMEOUT_S if long_running else policy.read_timeout_s)
        refreshed = False

        def on_response(response: requests.Response) -> bool:
            nonlocal refreshed
            throttle_code = throttled_from(response).code if response.status_code == 429 else None
            record_dataverse_response(response.status_code, throttle_code)
            hint = response.headers.get("x-ms-dop-hint")
            if hint and hint.isdigit():
                self.governor.apply_dop_hint(int(hint))
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._token = self.tokens.token_for_invocation(force_refresh=True)
                log_event(logger, "dataverse_token_refreshed", reason="401")
                return True
            if response.status_code not in policy.retry_statuses:
                self.governor.succeeded()
            return False

        with span("dataverse.request", **{"http.request.method": method.upper(),
                                           "dataverse.operation": operation_name(path)}) as current:  # fmt: skip
            response = self._send(method, url, body, data, params, headers, on_response, idempotent, timeout)
            current.set_attribute("http.response.status_code", response.status_code)
        if raise_for_status and response.status_code >= 400:
            raise throttled_from(response) if response.status_code == 429 else error_from(response)
        return response

    def _send(
        self,
        method: str,
        url: str,
        body: Any,
        data: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        on_response: Callable[[requests.Response], bool],
        idempotent: bool | None,
        timeout: tuple[float, float],
    ) -> requests.Response:
        try:
            return self._caller.send(
                method,
                url,
                json=body if data is None else None,
                data=data,
                params=params,
                headers_for_attempt=lambda: self._headers(headers),
                on_response=on_response,
                # After a connection breaks mid-response a POST may have been applied: re-send only what is safe.
                idempotent=idempotent if idempotent is not None else method.upper() != "POST",
                raise_for_status=False,
                timeout=timeout,
                verify=self.options.verify if self.options.verify is not None else True,
            )
        except DownstreamError as exc:
            cause = exc.original
            if exc.status is None:
                record_dataverse_response(None)
            if exc.outcome_unknown:
                raise DataverseError(
                    0,
                    "OutcomeUnknown",
                    f"the connection broke during a non-idempotent {method}: {type(cause).__name__}",
                ) from cause
            raise DataverseError(0, "ConnectionError", f"{type(cause).__name__}: {cause}") from cause

    def _paused_for(self, notice: RetryNotice) -> bool:
        """A 429 pauses every worker through the governor: that pause is the wait, the caller does not
        sleep again."""
        if notice.status != 429:
            return False
        self.governor.throttled(notice.retry_after_s or 1.0)
        return True

    # -- reads ----------------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self.request("GET", "WhoAmI").json())

    def get(
        self, entity_set: str, key: Mapping[str, Any] | str, *, select: Sequence[str] = (), table: str | None = None
    ) -> dict[str, Any] | None:
        """One record by id or alternate key; None when there is none. ``table`` (the logical name) lets a
        key that no URL path can carry be found by a query instead (see shared.dataverse.addressing)."""
        if needs_query_addressing(key):
            found = self._find_by_query(entity_set, key, table)
            if found is None:
                return None
            key = found
        params = {"$select": ",".join(select)} if select else None
        response = self.request("GET", entity_path(entity_set, key), params=params, raise_for_status=False)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise error_from(response)
        return dict(response.json())

    def _find_by_query(self, entity_set: str, key: Mapping[str, Any], table: str | None) -> str | None:
        return self.find_ids(entity_set, [key], table=table)[0]

    def find_ids(
        self, entity_set: str, keys: Sequence[Mapping[str, Any]], *, table: str | None = None
    ) -> list[str | None]:
        """The ids of the records with these key values (None where there is none), found by one
        ``$filter`` query (which carries any character, '/' included) for all of them.

        String comparison follows the server's collation (case-insensitive on Dataverse), as addressing by
        key does; of several matches the one equal to the letter is taken. The id is the one column a
        response carries besides the selected key columns (Dataverse always returns the primary key), so no
        table's naming is assumed (``task`` keys on ``activityid``); ``table`` is only a fallback hint."""
        if not keys:
            return []
        columns = list(keys[0])
        where = " or ".join(f"({key_filter(key)})" for key in keys)
        rows = list(self.query(entity_set, select=columns, filter=where))
        found: list[str | None] = []
        for key in keys:
            exact = [row for row in rows if all(row.get(k) == v for k, v in key.items())]
            similar = exact or [row for row in rows if all(alike(row.get(k), v) for k, v in key.items())]
            found.append(primary_id(similar[0], key, table) if similar else None)
        return found

    def pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str] = (),
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages, following ``@odata.nextLink`` with the same ``odata.maxpagesize``."""
        params: dict[str, str] = {}
        if select:
            params["$select"] = ",".join(select)
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        prefer = {"Prefer": f"odata.maxpagesize={min(page_size, MAX_PAGE_SIZE)}"} if top is None else None
        link: str | None = identifier(entity_set, "entity set")
        first = True
        while link:
            response = self.request("GET", link, params=params if first else None, headers=prefer)
            first = False
            payload = response.json()
            yield list(payload.get("value", []))
            link = payload.get("@odata.nextLink")

    def query(self, entity_set: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.pages(entity_set, **kwargs):
            yield from page

    def track_changes(self, entity_set: str, *, select: Sequence[str] = (), delta_link: str | None = None) -> DeltaPage:
        """Initial read (``delta_link=None``) or a delta read; returns rows, deleted ids and the new link."""
        changed: list[dict[str, Any]] = []
        deleted: list[str] = []
        headers = {"Prefer": "odata.track-changes"}
        link: str | None = delta_link or identifier(entity_set, "entity set")
        params = {"$select": ",".join(select)} if select and delta_link is None else None
        new_link = ""
        while link:
            payload = self.request("GET", link, params=params, headers=headers).json()
            params = None
            for row in payload.get("value", []):
                if str(row.get("@odata.context", "")).endswith("/$deletedEntity"):
                    deleted.append(str(row["id"]))
                else:
                    changed.append(row)
            link = payload.get("@odata.nextLink")
            new_link = payload.get("@odata.deltaLink", new_link)
        if not new_link:
            raise DataverseError(400, "NoDeltaLink", f"{entity_set}: change tracking is not enabled for this table")
        return DeltaPage(changed, deleted, new_link)

    # -- single writes -----------------------------------------------------------------------------------
    def create(self, entity_set: str, body: Mapping[str, Any]) -> str:
        response = self.request("POST", identifier(entity_set, "entity set"), body=dict(body))
        entity = response.headers.get("OData-EntityId") or response.headers.get("Location") or ""
        return entity.rsplit("(", 1)[-1].rstrip(")")

    def update(
        self,
        entity_set: str,
        key: Mapping[str, Any] | str,
        body: Mapping[str, Any],
        *,
        if_match: str = "*",
        table: str | None = None,
    ) -> None:
        if needs_query_addressing(key):
            found = self._find_by_query(entity_set, key, table)
            if found is None:
                raise DataverseError(404, RECORD_NOT_FOUND_CODE, f"{entity_set}: no record has this key")
            body, key = {**body, **writable(key)}, found
        self.request("PATCH", entity_path(entity_set, key), body=dict(body), headers={"If-Match": if_match})

    def upsert(
        self, entity_set: str, key: Mapping[str, Any] | str, body: Mapping[str, Any], *, table: str | None = None
    ) -> bool:
        """Create or update by key; returns True when a record was created."""
        if needs_query_addressing(key):
            return self._upsert_by_query(entity_set, key, body, table)
        response = self.request(  # PATCH by key: idempotent
            "PATCH", entity_path(entity_set, key), body=dict(body), headers={"Prefer": "return=representation"}
        )
        return response.status_code == 201

    def _upsert_by_query(
        self, entity_set: str, key: Mapping[str, Any], body: Mapping[str, Any], table: str | None
    ) -> bool:
        """Find, then update by id or create with the key columns in the body. A concurrent writer is
        absorbed: a create that loses to another create of the key updates the winner's record, an update
        whose record was deleted meanwhile creates it."""
        row = {**body, **writable(key)}
        for _ in range(QUERY_ADDRESSING_ATTEMPTS):
            found = self._find_by_query(entity_set, key, table)
            try:
                if found is not None:
                    self.request("PATCH", entity_path(entity_set, found), body=row, headers={"If-Match": "*"})
                    return False
                if len(writable(key)) < len(key):  # a lookup column is part of the key
                    raise KeyValueRefused(
                        next(iter(key)), "a record keyed by a lookup column and a '/' value cannot be created by id"
                    )
                self.create(entity_set, row)
                return True
            except DataverseError as exc:
                if not (exc.code == DUPLICATE_KEY_CODE or (found is not None and exc.status == 404)):
                    raise
        raise DataverseError(409, "KeyContended", f"{entity_set}: the key kept changing under concurrent writers")

    def delete(self, entity_set: str, key: Mapping[str, Any] | str, *, table: str | None = None) -> None:
        if needs_query_addressing(key):
            found = self._find_by_query(entity_set, key, table)
            if found is None:
                raise DataverseError(404, RECORD_NOT_FOUND_CODE, f"{entity_set}: no record has this key")
            key = found
        self.request("DELETE", entity_path(entity_set, key))

    # -- batch and bulk ------------------------------------------------------------------------------------
    def execute_batch(
        self, items: Sequence[BatchItem], *, continue_on_error: bool = True, idempotent: bool = False
    ) -> list[OperationResult]:
        content_type, data = encode_batch(items)
        headers = {"Content-Type": content_type}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.request(
            "POST",
            "$batch",
            data=data,
            headers=headers,
            long_running=True,
            raise_for_status=False,
            idempotent=idempotent,
        )
        if not response.headers.get("Content-Type", "").lower().startswith("multipart/"):
            raise error_from(response)  # the batch itself was refused (malformed, too many operations)
        return match_results(items, decode_batch(response.headers["Content-Type"], response.content))

    def bulk(self, entity_set: str, action: str, targets: Sequence[Mapping[str, Any]]) -> requests.Response:
        """``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple``; raises DataverseError for the whole request."""
        return self.request(
            "POST",
            f"{identifier(entity_set, 'entity set')}/Microsoft.Dynamics.CRM.{identifier(action, 'action')}",
            body={"Targets": list(targets)},
            long_running=True,
            idempotent=action in ("UpsertMultiple", "UpdateMultiple"),
        )
