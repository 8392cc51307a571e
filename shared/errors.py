"""The one exception tree of dvbridge.

::

    DvbridgeError                 anything dvbridge raises on purpose
    ├── ConfigError               settings missing or malformed; .problems lists every one
    │   └── CredentialFormatError the credential held in Key Vault cannot be used as it is
    ├── AuthError                 a step of the identity chain failed; .code, .cause, .fix, .step
    ├── DataverseError            the Web API refused a request; .status, .code, .message
    │   └── ThrottledError        429 after every retry; .retry_after_s
    ├── BatchDecodeError          a $batch reply is not well-formed multipart (shared.dataverse.batch_codec)
    ├── KeyValueRefused           a key, id or name no URL may carry; .field (shared.dataverse.addressing)
    ├── EventRejected             an Event Grid event we do not act on (shared.expiry.eventgrid)
    ├── StateConflict             an alert-state row changed since it was read (shared.expiry.state)
    ├── RequestRejected           an HTTP route's input is refused; .status (400/413), .reason (shared.http_input)
    ├── WebhookRejected           an incoming webhook is refused; .status (400/401/413), .reason
    ├── ClaimLost                 a webhook claim was taken over before it was settled (shared.webhooks.dedupe)
    └── EventInProgress           another copy of a webhook event is being processed: the queue retries
                                  (shared.webhooks.processor)

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
    ) -> None:
        self.code = code
        self.cause = cause
        self.fix = fix
        self.step = step
        self.detail = detail
        self.status = status
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


class WebhookRejected(DvbridgeError):
    """An incoming webhook is refused before it is acknowledged: 400 malformed, 401 not genuine, 413 too large."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"webhook rejected ({status}): {reason}")
