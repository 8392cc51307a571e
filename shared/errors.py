"""The one exception tree of dvbridge.

::

    DvbridgeError                 anything dvbridge raises on purpose
    ├── ConfigError               settings missing or malformed; .problems lists every one
    │   └── CredentialFormatError the credential held in Key Vault cannot be used as it is
    ├── AuthError                 a step of the identity chain failed; .code, .cause, .fix, .step
    ├── DataverseError            the Web API refused a request; .status, .code, .message
    │   └── ThrottledError        429 after every retry; .retry_after_s
    ├── DownstreamError           another service failed an outgoing call; .service, .status, .target
    │                             (scheme://host only), .retryable (shared.outgoing_http)
    ├── BatchDecodeError          a $batch reply is not well-formed multipart
    ├── KeyValueRefused           a key, id or name no URL may carry; .field (shared.dataverse.addressing)
    ├── EventRejected             an Event Grid event we do not act on (shared.expiry.eventgrid)
    ├── StateConflict             an alert-state row changed since it was read (shared.expiry.state)
    ├── RotationFailed            a credential rotation step failed for good; .step, .code, .cause, .fix
    │                             (shared.expiry.rotation: undone and alerted)
    ├── RequestRejected           an HTTP route's input is refused; .status (400/413), .reason (shared.http_input)
    ├── WebhookRejected           an incoming webhook is refused; .status (400/401/413), .reason
    ├── ClaimLost                 a webhook claim was taken over before it was settled (shared.webhooks.dedupe)
    ├── EventInProgress           another copy of a webhook event is being processed: the queue retries
    │                             (shared.webhooks.processor)
    ├── DeltaTokenExpired         a reconciler's delta link is older than change tracking keeps
    │                             (shared.webhooks.reconciler)
    ├── CheckpointMoved           another reconciler moved a table's checkpoint since it was read
    ├── WatchConflict             another watcher changed a step's row since it was read (shared.webhooks.watcher)
    └── IncidentNotOpen           an ack or snooze of a resolved webhook incident

Every error message is safe to log: no secret value or token is ever put into one.
Callers chain the original exception (``raise ... from exc``) so the SDK detail stays available.
"""

from __future__ import annotations

from collections.abc import Sequence


class DvbridgeError(Exception):
    """Base of every error dvbridge raises on purpose."""


class ConfigError(DvbridgeError):
    """One or more settings are missing or malformed.

    ``problems`` holds one line per problem, each naming the setting and showing a good value,
    so a single start-up reports everything that needs fixing.
    """

    def __init__(self, problems: Sequence[str], *, heading: str = "invalid configuration") -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{heading} ({len(self.problems)} problem(s)):\n{lines}")


class CredentialFormatError(ConfigError):
    """The Dataverse credential found in Key Vault cannot be used (bad connection string, PEM, PFX)."""

    def __init__(self, problem: str) -> None:
        super().__init__([problem], heading="unusable Dataverse credential")


class AuthError(DvbridgeError):
    """A step of the identity chain failed.

    Attributes:
        code: the service's code (``AADSTS7000215``, ``ForbiddenByRbac``, ``0x80072560``...)
        cause: the likely cause, in words
        fix: what to change, in words
        step: which step of the chain failed (``managed_identity``, ``key_vault``, ``entra_token``...)
        status: the HTTP status the service answered with, when there was one
        retryable: the service was unreachable or not answering: a later try can succeed unchanged
    """

    def __init__(
        self,
        code: str,
        *,
        cause: str,
        fix: str,
        step: str,
        detail: str = "",
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        self.code = code
        self.cause = cause
        self.fix = fix
        self.step = step
        self.detail = detail
        self.status = status
        self.retryable = retryable
        text = f"[{step}] {code}: {cause} Fix: {fix}"
        if detail:
            text += f" (detail: {detail})"
        super().__init__(text)


class DataverseError(DvbridgeError):
    """The Dataverse Web API answered with an error (after retries, where retrying made sense)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        super().__init__(f"Dataverse {status} {code}: {message}")


class ThrottledError(DataverseError):
    """Still throttled (429) when the retry budget ran out."""


class DownstreamError(DvbridgeError):
    """A call to another service failed: it refused the request, or did not answer within the retry budget.

    Attributes:
        service: who was called (``source API``, ``HTTP sink``, ``forward target``, ``notification channel``,
            ``Microsoft Graph``...)
        target: ``scheme://host[:port]`` only: a channel URL or an API URL may carry a secret in its path or query
        status: the last HTTP status, None when no response came
        retryable: whether trying again later may succeed (no response, 408, 429, 5xx); False for another 4xx
            and for a request whose outcome is unknown
        reason: ``HTTP 503 after 5 attempt(s)``, ``ConnectionError``...
        outcome_unknown: the connection broke during a request that is not safe to send twice, so the
            service may or may not have applied it
        context: what the failure means for the caller (``the delta link is kept``)
        check: what to look at, in words
        retry_after_s: the wait the service asked for in its last answer, when it named one
    """

    def __init__(
        self,
        service: str,
        target: str,
        status: int | None,
        *,
        retryable: bool,
        reason: str = "",
        outcome_unknown: bool = False,
        context: str = "",
        original: BaseException | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.service = service
        self.target = target
        self.status = status
        self.retryable = retryable
        self.reason = reason
        self.outcome_unknown = outcome_unknown
        self.context = context
        # The exception of the HTTP library, kept for callers that map it; never put in the message,
        # because its text carries the whole URL.
        self.original = original
        self.retry_after_s = retry_after_s
        self.check = _downstream_check(service, target, status, outcome_unknown)
        if outcome_unknown:
            what = f"broke the connection mid-request ({reason}): whether it applied the request is unknown"
        elif status is None:
            what = f"did not answer ({reason or 'no response'})"
        else:
            what = f"answered {reason or f'HTTP {status}'}"
        text = f"{service} at {target} {what}"
        if context:
            text += f"; {context}"
        super().__init__(f"{text}. Check: {self.check}")

    def with_context(self, context: str) -> DownstreamError:
        """The same failure, with what it means for the caller added to the message."""
        return DownstreamError(
            self.service,
            self.target,
            self.status,
            retryable=self.retryable,
            reason=self.reason,
            outcome_unknown=self.outcome_unknown,
            context=f"{self.context}; {context}" if self.context else context,
            original=self.original,
            retry_after_s=self.retry_after_s,
        )


def _downstream_check(service: str, target: str, status: int | None, outcome_unknown: bool) -> str:
    if outcome_unknown:
        return f"whether the {service} applied the request before it is sent again"
    if status is None:
        return f"that {target} resolves and is reachable from the function app (DNS, firewall, proxy, TLS) and is up"
    if status in (401, 403):
        return f"the credential, key or signature the {service} expects"
    if status in (404, 405, 410):
        return f"the URL configured for the {service}"
    if status in (408, 429) or status >= 500:
        return f"the {service}'s health and limits; it was retried as long as the retry policy allows"
    return f"what the {service} accepts (the payload's shape and size) and its own error log"


class BatchDecodeError(DvbridgeError, ValueError):
    """A ``$batch`` reply is not a well-formed multipart batch response."""


class WebhookRejected(DvbridgeError):
    """An incoming webhook is refused before it is acknowledged: 400 malformed, 401 not genuine, 413 too large."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"webhook rejected ({status}): {reason}")
