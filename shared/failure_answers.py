"""How every route answers a dependency's failure: one mapping from the exception tree (and the Azure SDK's
errors) to 503 for what a retry can fix, 502 for a refusal no retry changes, with what failed, what to
check and, when throttled, ``Retry-After``; never a query string, token or secret in the body. Anything that
is no dependency's failure is re-raised: a bug is the host's 500.

Only the standard library at module level: the blueprints import this while the host indexes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import DvbridgeError
from shared.http_input import RequestRejected
from shared.logging import log_event
from shared.outgoing_http import retryable_status

if TYPE_CHECKING:
    import azure.functions as func

logger = logging.getLogger(__name__)

# The Retry-After of a throttled answer when the service named no wait of its own.
DEFAULT_RETRY_AFTER_S = 30
STORAGE_CHECK = (
    "that the storage account (AzureWebJobsStorage or AzureWebJobsStorage__accountName) is reachable from the"
    " function app, that its identity holds the Storage Blob, Queue and Table Data Contributor roles, and the"
    " account's health"
)
# What a body may never carry: a URL's query string (a SAS signature, a key), a bearer token, a JWT.
_QUERY = re.compile(r"\?[\w.~%$-]+=[^\s'\")\]>]*")
_BEARER = re.compile(r"(?i)bearer\s+[\w.~+/=-]+")
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


@dataclass(frozen=True)
class Failure:
    """How a route answers a dependency's failure: the status, a JSON body naming what failed (``failed``),
    the error and what to check (``check``), and the headers (``Retry-After`` when throttled)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, **fields: Any) -> func.HttpResponse:
        """The HTTP answer: ``fields`` (the job, its status...) first, then what failed and what to check."""
        import azure.functions as func

        body = json.dumps({**fields, **self.body})
        return func.HttpResponse(body, status_code=self.status, mimetype="application/json", headers=self.headers)


def is_outage(exc: BaseException) -> bool:
    """Whether it is a dependency's failure (storage, Key Vault, Entra, Dataverse, another service, settings
    the deployment has yet to fix) rather than the caller's input or a bug."""
    from azure.core.exceptions import AzureError  # lazy: indexing stays light

    if isinstance(exc, RequestRejected):
        return False
    return isinstance(exc, DvbridgeError | AzureError | OSError | TimeoutError)


def failure_answer(exc: BaseException, event: str, *, dependency: str = "Azure Storage", **log_fields: Any) -> Failure:
    """The one mapping of a dependency's failure to an answer, used by every route: 503 for what a retry can
    fix (throttling, an outage, a timeout, no connection), with ``Retry-After`` when throttled; 502 for a
    dependency that refused in a way no retry changes (a 4xx of an HTTP sink, Dataverse 403, Key Vault
    refusing the identity). ``dependency`` names what the route reaches through an Azure SDK, whose errors
    carry no service name. Logs ``event``; anything that is no dependency's failure is re-raised (a bug)."""
    if not is_outage(exc):
        raise exc
    status, failed, check, wait = _classify(exc, dependency)
    log_event(logger, event, logging.ERROR, error=type(exc).__name__, status=status, failed=failed, **log_fields)
    # dvbridge's own messages are safe to show (shared.errors); an SDK's may quote a URL or a request, so only
    # its type (and status) is named.
    detail = str(exc) if isinstance(exc, DvbridgeError) else _sdk_detail(exc)
    verb = "temporarily unavailable" if status == 503 else "refused"
    body: dict[str, Any] = {
        "error": scrub(f"{failed} {verb} ({type(exc).__name__}: {detail})"),
        "failed": failed,
        "check": scrub(check),
        "retry": status == 503,
    }
    headers: dict[str, str] = {}
    if wait is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        body["retry_after_s"] = int(headers["Retry-After"])
    return Failure(status, body, headers)


def scrub(text: str) -> str:
    """``text`` without query strings, bearer tokens or JWTs, whatever quoted them."""
    return _JWT.sub("<token>", _BEARER.sub("Bearer <token>", _QUERY.sub("?<query removed>", text)))


def _sdk_detail(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    return " ".join(str(part) for part in (f"HTTP {status}" if status else "no response", code) if part)


def _classify(exc: BaseException, dependency: str) -> tuple[int, str, str, float | None]:
    """(status, what failed, what to check, seconds to wait or None)."""
    from azure.core.exceptions import AzureError, HttpResponseError

    from shared.errors import (
        AuthError,
        BatchDecodeError,
        ConfigError,
        CredentialFormatError,
        DataverseError,
        DownstreamError,
        ThrottledError,
    )

    if isinstance(exc, DownstreamError):
        wait: float | None = None
        if exc.status == 429:
            wait = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        check = exc.check
        return (503 if exc.retryable else 502), f"{exc.service} at {exc.target}", check, wait
    if isinstance(exc, DataverseError):
        throttled = isinstance(exc, ThrottledError) or exc.status == 429
        wait = exc.retry_after_s if exc.retry_after_s is not None else (DEFAULT_RETRY_AFTER_S if throttled else None)
        retryable = throttled or (exc.status == 0 and exc.code == "ConnectionError") or retryable_status(exc.status)
        return (503 if retryable else 502), "Dataverse", _dataverse_check(exc.status, throttled), wait
    if isinstance(exc, AuthError):
        # The catalogue says which codes mean "not reachable now"; any other AuthError is a refusal.
        retryable = exc.retryable or (exc.status is not None and retryable_status(exc.status))
        return (503 if retryable else 502), f"identity step {exc.step}", exc.fix, None
    if isinstance(exc, CredentialFormatError):
        return 502, "the Dataverse credential in Key Vault", "the Key Vault secret or certificate's value", None
    if isinstance(exc, ConfigError):
        return 503, "settings", "the app settings named in the error (GET /api/health/doctor lists them)", None
    if isinstance(exc, BatchDecodeError):
        return 502, "Dataverse", "the Dataverse environment's health; the $batch reply was not readable", None
    if isinstance(exc, AzureError):
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        wait = None
        if status in (429, 503) and isinstance(exc, HttpResponseError):  # the storage service's own throttling
            wait = _retry_after_header(exc) or DEFAULT_RETRY_AFTER_S
        check = STORAGE_CHECK if dependency == "Azure Storage" else f"the {dependency}'s health and access"
        return (503 if retryable_status(status) else 502), dependency, check, wait
    if isinstance(exc, DvbridgeError):  # a claim race, an event in progress: a retry settles it
        return 503, type(exc).__name__, "nothing: retry", None
    check = STORAGE_CHECK if dependency == "Azure Storage" else f"that the {dependency} is reachable"
    return 503, dependency, check, None  # OSError, TimeoutError: no answer


def _dataverse_check(status: int, throttled: bool) -> str:
    if throttled:
        return "Dataverse's service protection limits: retry after the wait; lower the job's batch size or concurrency"
    if status == 401:
        return "the application user of the app registration in the environment, and its credential"
    if status == 403:
        return "the application user's security role: it lacks a privilege on the table (see the error's code)"
    if status == 404:
        return "the table's entity set name and the environment URL (DATAVERSE_URL)"
    if status == 0 or retryable_status(status):
        return "that DATAVERSE_URL is reachable from the function app and the environment's service health"
    return "the values the job sends and its mapping (the error names the column or rule)"


def _retry_after_header(exc: Any) -> float | None:
    from shared.outgoing_http import retry_after_s

    response = getattr(exc, "response", None)
    return retry_after_s(response) if response is not None and hasattr(response, "headers") else None
