"""What HTTP routes accept from a caller, checked in one place: query-string parameters and JSON bodies.

Bad input is refused with :class:`RequestRejected` (400, or 413 for a body over its limit) and a reason
naming the parameter or field and what would be accepted, so a caller can fix the request; the routes
answer it as ``{"error": reason}``. A dependency's failure is answered through :func:`failure_answer`, the
one mapping every route uses: 503 for what a retry can fix, 502 for a refusal no retry changes, each naming
what failed and what to check; anything else is a bug and stays the host's 500.

Only the standard library at module level: the blueprints import this while the host indexes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import DvbridgeError
from shared.logging import log_event

FUNCTION_KEY_PARAM = "code"  # the Functions host's ?code=<key>: every keyed route receives it in its query
PREVIEW_CHARS = 40  # how much of a refused value or name a reason quotes
# A JSON number literal longer than this is no count of days or items: refused before int() sees it
# (Python refuses ints of more than 4,300 digits with a ValueError, and converting them is quadratic).
MAX_NUMBER_CHARS = 32
logger = logging.getLogger(__name__)
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() also takes " 5", "+5", "5_0" and other scripts' digits


class RequestRejected(DvbridgeError):
    """A request's input is refused: 400 malformed, 413 too large; ``reason`` names what and the fix."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"request rejected ({status}): {reason}")


def preview(value: Any) -> str:
    """A caller's value as a refusal quotes it: short, and containers by their kind."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = value if isinstance(value, str) else json.dumps(value)
    clipped = text[:PREVIEW_CHARS] + "..." if len(text) > PREVIEW_CHARS else text
    return repr(clipped) if isinstance(value, str) else clipped


# -- query strings -----------------------------------------------------------------------------------------
def query(params: Mapping[str, str], declared: Collection[str]) -> Mapping[str, str]:
    """The query parameters, refusing any the route does not declare: a misspelt ``?limt=5`` would
    otherwise be ignored and the default used. The function key (``?code=``) is always allowed; its
    value is never read or quoted."""
    unknown = sorted(name for name in params if name not in declared and name.lower() != FUNCTION_KEY_PARAM)
    if unknown:
        names = ", ".join(preview(name) for name in unknown[:5])
        takes = ", ".join(sorted(declared)) if declared else "none"
        raise RequestRejected(400, f"unknown query parameter(s) {names}; this route takes: {takes}")
    return params


def int_param(params: Mapping[str, str], name: str, *, low: int, high: int, default: int) -> int:
    """A whole-number parameter in ``low..high``: ASCII digits only, so ``1e3``, ``-1``, `` 5`` are refused."""
    raw = params.get(name)
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw) is None or len(raw) > MAX_NUMBER_CHARS or not low <= int(raw) <= high:
        rule = f"{name} must be a whole number {low}..{high} (default {default})"
        raise RequestRejected(400, f"{rule}, got {preview(raw)}")
    return int(raw)


def text_param(params: Mapping[str, str], name: str, *, pattern: re.Pattern[str], shape: str) -> str | None:
    """An optional text parameter matching ``pattern`` in full; present but empty is refused, not ignored."""
    raw = params.get(name)
    if raw is None:
        return None
    if pattern.fullmatch(raw) is None:
        raise RequestRejected(400, f"{name} must be {shape}, got {preview(raw)}")
    return raw


# -- JSON bodies --------------------------------------------------------------------------------------------
def json_object(raw: bytes, *, limit_bytes: int, fields: Collection[str], example: str) -> dict[str, Any]:
    """The body as a JSON object with only the declared fields; an empty body is ``{}``. ``example`` is a
    good body, quoted in every refusal."""
    if len(raw) > limit_bytes:
        raise RequestRejected(413, f"the body is {len(raw):,} bytes; at most {limit_bytes:,} are accepted")
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(400, f"the body is not UTF-8 text; send JSON such as {example}") from None
    try:
        # NaN and Infinity (which json.loads admits) become floats that a field's range check refuses by name.
        body = json.loads(text, parse_int=_parse_int, object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise RequestRejected(400, f"the body is not JSON ({str(exc)[:80]}); send JSON such as {example}") from None
    if not isinstance(body, dict):
        raise RequestRejected(400, f"the body must be a JSON object such as {example}, not {preview(body)}")
    unknown = sorted(name for name in body if name not in fields)
    if unknown:
        names = ", ".join(preview(name) for name in unknown[:5])
        raise RequestRejected(400, f"unknown field(s) {names}; the fields are {', '.join(fields)}")
    return body


def _parse_int(text: str) -> int | float:
    # A literal of thousands of digits becomes a float (inf), which the field's range check refuses by name.
    return int(text) if len(text) <= MAX_NUMBER_CHARS else float(text)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in pairs:
        if name in body:  # json.loads would keep the last silently
            raise ValueError(f"field {preview(name)} appears twice")
        body[name] = value
    return body


def number_field(body: Mapping[str, Any], name: str, *, above: float, at_most: float, unit: str) -> float | None:
    """An optional number in ``(above, at_most]``; booleans are not numbers here (``true`` is not 1 day)."""
    if name not in body:
        return None
    value = body[name]
    rule = f"{name} must be a number of {unit} greater than {above:g} and at most {at_most:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    if not math.isfinite(value) or not above < value <= at_most:
        raise RequestRejected(400, f"{rule}, got {value:g}")
    return float(value)


def text_field(body: Mapping[str, Any], name: str, *, max_chars: int, what: str) -> str | None:
    """An optional non-blank string of at most ``max_chars`` characters (surrounding spaces removed)."""
    if name not in body:
        return None
    value = body[name]
    rule = f"{name} must be {what}: text of 1..{max_chars} characters"
    if not isinstance(value, str):
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    text = value.strip()
    if not text or len(text) > max_chars or not text.isprintable():
        raise RequestRejected(400, f"{rule} without control characters, got {preview(value)}")
    return text


def time_field(body: Mapping[str, Any], name: str) -> datetime | None:
    """An optional ISO-8601 moment; without a zone it is UTC."""
    if name not in body:
        return None
    value = body[name]
    rule = f'{name} must be an ISO-8601 time such as "2026-12-01T00:00:00Z"'
    # ISO-8601 is printable ASCII; CPython's fromisoformat stops at a NUL, so "...Z\x00" would pass.
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise RequestRejected(400, f"{rule}, got {preview(value)}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: "0001-01-01T00:00+01:00" has no UTC moment
        raise RequestRejected(400, f"{rule}, got {preview(value)}") from None


# -- answers ------------------------------------------------------------------------------------------------
# Entra, Key Vault and Dataverse codes (shared.identity.diagnosis) that mean "not reachable or not answering
# now": a retry can fix them. Every other AuthError is a refusal (a wrong secret, a missing role).
TRANSIENT_AUTH_CODES = frozenset({
    "EntraUnreachable", "EntraUnavailable", "KeyVaultUnreachable", "KeyVaultUnavailable",
    "ManagedIdentityUnavailable", "DataverseUnreachable",
})  # fmt: skip
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


def _retryable_status(status: int | None) -> bool:
    return status is None or status in (408, 429) or status >= 500


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
        retryable = throttled or (exc.status == 0 and exc.code == "ConnectionError") or _retryable_status(exc.status)
        return (503 if retryable else 502), "Dataverse", _dataverse_check(exc.status, throttled), wait
    if isinstance(exc, AuthError):
        retryable = exc.code in TRANSIENT_AUTH_CODES or (exc.status is not None and _retryable_status(exc.status))
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
        return (503 if _retryable_status(status) else 502), dependency, check, wait
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
    if status == 0 or _retryable_status(status):
        return "that DATAVERSE_URL is reachable from the function app and the environment's service health"
    return "the values the job sends and its mapping (the error names the column or rule)"


def _retry_after_header(exc: Any) -> float | None:
    from shared.outgoing_http import retry_after_s

    response = getattr(exc, "response", None)
    return retry_after_s(response) if response is not None and hasattr(response, "headers") else None
