"""The one layer for outgoing HTTP: a named retry policy per kind of caller, one send loop, one parser of
``Retry-After``, and one mapping of a failure into :class:`~shared.errors.DownstreamError`.

Every call dvbridge makes to another service (Dataverse, a sync source API, an HTTP sink, a webhook forward
target, a notification channel, Microsoft Graph, the doctor's probes) goes through :class:`HttpCaller`. A
policy says what is retried (statuses, connection errors), how often and for how long, how long to wait,
and whether a POST may be sent again after its connection broke (the server may have applied it). Hooks let
the Dataverse client sit on the same loop: a per-attempt context (the throttle governor's slot), per-attempt
headers (the bearer token), a response hook that can ask for one immediate resend (401: refresh the token),
and a hook told about each retryable failure that can say it has already paused (the governor's 429 pause,
so ``Retry-After`` is waited out once, not twice).

A failure names the service and only the target's scheme and host: channel URLs and some API URLs carry
secrets in their path or query. ``requests`` loads lazily, so that indexing stays light.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.errors import DownstreamError
from shared.logging import log_event
from shared.settings_registry import DEFAULT_HTTP_TIMEOUT_S

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
# Statuses that say "not now" rather than "not this": a timeout, throttling, a server or gateway failure.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of caller retries. ``name`` is the service as errors and log lines name it."""

    name: str
    attempts: int
    retry_statuses: frozenset[int]
    retry_connection_errors: bool = True
    # After a connection broke mid-request a POST may have been applied: sent again only where the receiver
    # tolerates a repeat. Other methods are idempotent; a caller can say otherwise per request.
    resend_posts: bool = False
    deadline_s: float = 600.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter_fraction: float = 0.1  # up to 10 % more per wait, so callers that failed together spread out
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = 60.0

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based) when the server named none."""
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))

    def with_timeout(self, seconds: float) -> RetryPolicy:
        """This policy with a read timeout of ``seconds`` (a setting such as HTTP_TIMEOUT_S); the connect
        timeout never exceeds it."""
        return replace(self, connect_timeout_s=min(self.connect_timeout_s, seconds), read_timeout_s=seconds)


DATAVERSE = RetryPolicy("Dataverse", attempts=8, retry_statuses=frozenset({429, 502, 503, 504}))
SOURCE_API = RetryPolicy(
    "source API", attempts=6, retry_statuses=frozenset({429, 500, 502, 503, 504}), backoff_base_s=1.0
)
# A failed run keeps its delta link and sends the same changes again, so a sink sees every batch at least
# once anyway: re-sending a POST whose connection broke adds nothing new. Any other 4xx is the sink refusing
# the payload, which no retry changes.
HTTP_SINK = RetryPolicy(
    "HTTP sink", attempts=5, retry_statuses=TRANSIENT_STATUSES, resend_posts=True, deadline_s=300.0,
    backoff_base_s=1.0,
)  # fmt: skip
# Each delivery is signed with the event key as its nonce, so the receiver can drop a repeat. The queue
# retries the event later, so this budget stays short.
FORWARD = RetryPolicy(
    "forward target", attempts=4, retry_statuses=TRANSIENT_STATUSES, resend_posts=True, deadline_s=60.0,
    read_timeout_s=30.0,
)  # fmt: skip
# A repeated alert beats a lost one; a channel down for longer is retried on the next sweep. One sweep sends
# alone, so there is no crowd to spread out: no jitter.
NOTIFY = RetryPolicy(
    "notification channel", attempts=3, retry_statuses=TRANSIENT_STATUSES, resend_posts=True, deadline_s=30.0,
    jitter_fraction=0.0, read_timeout_s=15.0,
)  # fmt: skip
GRAPH = RetryPolicy(
    "Microsoft Graph", attempts=3, retry_statuses=frozenset({429, 503, 504}), deadline_s=60.0, backoff_base_s=1.0,
    read_timeout_s=DEFAULT_HTTP_TIMEOUT_S,
)  # fmt: skip
# The doctor reports what it finds now: one attempt, no retry.
PROBE = RetryPolicy(
    "Dataverse", attempts=1, retry_statuses=frozenset(), retry_connection_errors=False,
    read_timeout_s=DEFAULT_HTTP_TIMEOUT_S,
)  # fmt: skip
# One read of Entra's OpenID document, to explain why MSAL could not start: a diagnosis, never retried.
ENTRA_DISCOVERY = RetryPolicy(
    "Entra ID", attempts=1, retry_statuses=frozenset(), retry_connection_errors=False,
    read_timeout_s=DEFAULT_HTTP_TIMEOUT_S,
)  # fmt: skip
POLICIES = {"DATAVERSE": DATAVERSE, "SOURCE_API": SOURCE_API, "HTTP_SINK": HTTP_SINK, "FORWARD": FORWARD,
            "NOTIFY": NOTIFY, "GRAPH": GRAPH, "PROBE": PROBE, "ENTRA_DISCOVERY": ENTRA_DISCOVERY}  # fmt: skip


def retry_after_s(response: requests.Response | None, *, now: Callable[[], float] = time.time) -> float | None:
    """The wait a response's ``Retry-After`` asks for, in seconds: delta-seconds or an HTTP-date (any of its
    three forms; a date in the past is 0). None when there is no header or it is not one of those."""
    if response is None:
        return None
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the asctime form names no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what an error or log line may show of it (never user, path or query)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an unparseable URL"
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{f':{port}' if port else ''}"


@dataclass(frozen=True)
class RetryNotice:
    """One retryable failure, told to ``on_retry``: ``final`` when the budget ran out and none follows."""

    attempt: int
    status: int | None  # None: no response (connection error or timeout)
    error: str | None  # the exception's type name when there was no response
    retry_after_s: float | None
    wait_s: float
    final: bool


def retryable_status(status: int | None) -> bool:
    """Whether trying again later may succeed: no response, a timeout, throttling or a server error."""
    return status is None or status in (408, 429) or status >= 500


class HttpCaller:
    """Sends requests under one :class:`RetryPolicy`.

    ``attempt_context`` wraps each attempt (a concurrency slot); ``on_retry`` is told about each retryable
    failure and returns True when it has already waited (then the caller does not sleep). ``requests_sent``
    counts every request put on the wire. A request goes through the session's verb method (``session.get``,
    ``session.post``...) when it has one, else ``session.request``: a ``requests.Session`` routes both to
    ``request``, and a stand-in session need only answer what it is asked.
    """

    def __init__(
        self,
        session: requests.Session | None,
        policy: RetryPolicy,
        *,
        attempt_context: Callable[[], AbstractContextManager[Any]] | None = None,
        on_retry: Callable[[RetryNotice], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self.policy = policy
        self.requests_sent = 0
        self._attempt_context = attempt_context or nullcontext
        self._on_retry = on_retry
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security  # nosec B311

    def __repr__(self) -> str:
        return f"HttpCaller(policy={self.policy.name!r})"

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def send(
        self,
        method: str,
        url: str,
        *,
        headers_for_attempt: Callable[[], Mapping[str, str]] | None = None,
        on_response: Callable[[requests.Response], bool] | None = None,
        idempotent: bool | None = None,
        raise_for_status: bool = True,
        timeout: tuple[float, float] | float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send until an answer that is not retried, the attempts run out or the deadline would pass.

        ``headers_for_attempt`` is called before each attempt and merged over ``headers``; ``on_response``
        sees every response and returns True to have the request sent again at once (honoured once, outside
        the attempt budget). With ``raise_for_status`` a final status of 400 or more raises
        :class:`DownstreamError`; without it the last response is returned whatever its status. No response
        at the end always raises."""
        import requests

        policy = self.policy
        deadline = self._clock() + policy.deadline_s
        verb = method.upper()
        safe_to_resend = idempotent if idempotent is not None else (verb != "POST" or policy.resend_posts)
        send = getattr(self.session, method.lower(), None) or (
            lambda target, **rest: self.session.request(verb, target, **rest)
        )
        base_headers = dict(kwargs.pop("headers", None) or {})
        call = {**kwargs, "timeout": timeout or policy.timeout}
        resend_available = on_response is not None
        attempt = 0
        while True:
            attempt += 1
            response: requests.Response | None = None
            error: Exception | None = None
            headers = {**base_headers, **(headers_for_attempt() if headers_for_attempt else {})}
            with self._attempt_context():
                self.requests_sent += 1
                try:
                    response = send(url, **call, **({"headers": headers} if headers else {}))
                except requests.ConnectTimeout as exc:
                    error = exc  # nothing reached the server: always safe to send again
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                    if not safe_to_resend:
                        raise self._failure(url, None, type(exc).__name__, exc, outcome_unknown=True) from None
                    error = exc
                except requests.RequestException as exc:  # an invalid URL, too many redirects: no retry helps
                    raise self._failure(url, None, type(exc).__name__, exc, retryable=False) from None
            if response is not None:
                if resend_available and on_response is not None and on_response(response):
                    resend_available = False
                    attempt -= 1
                    continue
                if response.status_code not in policy.retry_statuses:
                    if raise_for_status and response.status_code >= 400:
                        raise self._failure(url, response.status_code, f"HTTP {response.status_code}", None)
                    return response
            retry_after = retry_after_s(response, now=self._wall_clock)
            wait = retry_after if retry_after is not None else policy.backoff_s(attempt)
            wait *= 1 + self._rng.random() * policy.jitter_fraction
            final = (
                attempt >= policy.attempts
                or self._clock() + wait > deadline
                or (response is None and not policy.retry_connection_errors)
            )
            status = response.status_code if response is not None else None
            error_name = type(error).__name__ if error is not None else None
            notice = RetryNotice(attempt, status, error_name, retry_after, wait, final)
            paused = self._on_retry(notice) if self._on_retry is not None else False
            if final:
                if response is not None and not raise_for_status:
                    return response
                reason = f"HTTP {status}" if status is not None else str(error_name)
                raise self._failure(
                    url, status, f"{reason} after {attempt} attempt(s)", error, retry_after_s=retry_after
                ) from None
            log_event(
                logger,
                "http_retry",
                logging.INFO,
                service=policy.name,
                target=origin(url),
                attempt=attempt,
                status=status if status is not None else error_name,
                wait_s=round(wait, 2),
            )
            if not paused:
                self._sleep(wait)

    def _failure(
        self,
        url: str,
        status: int | None,
        reason: str,
        original: BaseException | None,
        *,
        retryable: bool | None = None,
        outcome_unknown: bool = False,
        retry_after_s: float | None = None,
    ) -> DownstreamError:
        # Not chained: the exceptions of requests carry the whole URL, path and query included.
        return DownstreamError(
            self.policy.name,
            origin(url),
            status,
            retryable=retryable_status(status) and not outcome_unknown if retryable is None else retryable,
            reason=reason,
            outcome_unknown=outcome_unknown,
            original=original,
            retry_after_s=retry_after_s,
        )
