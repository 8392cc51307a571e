"""Key Vault secrets through the managed identity, cached per worker with a TTL.

At most one GET per secret per TTL. If Key Vault is unreachable (or answers 5xx/429) and a cached
value exists, the cached value is served for up to ``max_stale_s`` past its TTL, with a warning; a
refusal (403/404/disabled) is never papered over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import AuthError
from shared.identity.diagnosis import auth_error
from shared.logging import log_event, register_secret

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

logger = logging.getLogger(__name__)

KEY_VAULT_RETRY_TOTAL = 2  # azure-core's default of 10 would hold an invocation for minutes
KEY_VAULT_RETRY_BACKOFF_MAX_S = 4
STALE_RETRY_INTERVAL_S = 30  # while serving stale, try Key Vault again at most this often
STEP = "key_vault"


@dataclass(frozen=True, repr=False)
class SecretValue:
    """A secret's value and the properties dvbridge uses. The value never appears in a repr."""

    name: str
    value: str
    version: str | None
    content_type: str | None
    expires_on: datetime | None
    tags: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"SecretValue(name={self.name!r}, version={self.version!r}, content_type={self.content_type!r},"
            f" expires_on={self.expires_on!r}, value=***)"
        )


@dataclass
class _Entry:
    secret: SecretValue
    fetched_at: float
    next_attempt_at: float


class SecretStore:
    """Reads Key Vault secrets with a per-worker TTL cache and a bounded stale fallback."""

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        *,
        ttl_s: float,
        max_stale_s: float,
        verify_challenge_resource: bool = True,
        identity_label: str = "system-assigned",
        clock: Callable[[], float] = time.monotonic,
        secret_client: SecretClient | None = None,
    ) -> None:
        self.vault_url = vault_url
        self._credential = credential
        self._ttl_s = ttl_s
        self._max_stale_s = max_stale_s
        self._verify_challenge_resource = verify_challenge_resource
        self._identity_label = identity_label
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._client: SecretClient | None = secret_client  # injectable, like a transport
        self._cert_client: CertificateClient | None = None

    def __repr__(self) -> str:
        return f"SecretStore(vault_url={self.vault_url!r}, cached={sorted(self._cache)})"

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "verify_challenge_resource": self._verify_challenge_resource,
            "retry_total": KEY_VAULT_RETRY_TOTAL,
            "retry_backoff_max": KEY_VAULT_RETRY_BACKOFF_MAX_S,
        }

    def _secrets(self) -> SecretClient:
        if self._client is None:
            from azure.keyvault.secrets import SecretClient

            self._client = SecretClient(self.vault_url, self._credential, **self._client_kwargs())
        return self._client

    def _certificates(self) -> CertificateClient:
        if self._cert_client is None:
            from azure.keyvault.certificates import CertificateClient

            self._cert_client = CertificateClient(self.vault_url, self._credential, **self._client_kwargs())
        return self._cert_client

    def list_secret_properties(self) -> list[Any]:
        """Every secret's properties (expiry, tags; never a value). Needs the *list* data action, which
        Key Vault Reader (metadata only) and Key Vault Secrets User both grant. Raises AuthError."""
        try:
            return list(self._secrets().list_properties_of_secrets())
        except Exception as exc:
            raise self._error(exc, "(list secrets)") from exc

    def list_certificate_properties(self) -> list[Any]:
        """Every certificate's properties. Raises AuthError."""
        try:
            return list(self._certificates().list_properties_of_certificates())
        except Exception as exc:
            raise self._error(exc, "(list certificates)") from exc

    def get(self, name: str) -> SecretValue:
        """The latest enabled version of secret ``name`` (cached for the TTL). Raises AuthError."""
        with self._lock:
            now = self._clock()
            entry = self._cache.get(name)
            if entry is not None and now - entry.fetched_at < self._ttl_s:
                return entry.secret
            if entry is not None and now < entry.next_attempt_at:
                return entry.secret  # serving stale; Key Vault was down moments ago
            try:
                secret = self._fetch(name)
            except AuthError as exc:
                transient = exc.retryable and exc.step == STEP  # Key Vault itself is down, not the identity
                if transient and entry is not None and now - entry.fetched_at < self._ttl_s + self._max_stale_s:
                    entry.next_attempt_at = now + STALE_RETRY_INTERVAL_S
                    log_event(
                        logger,
                        "secret_served_stale",
                        logging.WARNING,
                        secret=name,
                        age_s=int(now - entry.fetched_at),
                        reason=exc.code,
                    )
                    return entry.secret
                raise
            self._cache[name] = _Entry(secret, now, now)
            return secret

    def enabled_versions(self, name: str) -> list[str]:
        """The enabled versions of ``name``, newest first (not cached: a rare path). Raises AuthError."""
        try:
            return enabled_versions(self._secrets(), name)
        except Exception as exc:
            raise self._error(exc, f"{name} (versions)") from exc

    def get_version(self, name: str, version: str) -> SecretValue:
        """One version of ``name`` by its id (not cached). Raises AuthError."""
        try:
            return secret_value(name, self._secrets().get_secret(name, version))
        except Exception as exc:
            raise self._error(exc, f"{name}/{version}") from exc

    def invalidate(self, name: str) -> None:
        """Drop ``name`` from the cache: the next :meth:`get` reads Key Vault."""
        with self._lock:
            self._cache.pop(name, None)

    def _fetch(self, name: str) -> SecretValue:
        try:
            bundle = self._secrets().get_secret(name)
        except Exception as exc:  # mapped to one AuthError per failure kind below
            raise self._error(exc, name) from exc
        secret = secret_value(name, bundle)
        log_event(logger, "secret_read", secret=name, version=secret.version)
        return secret

    def find_certificate_name(self, thumbprint_hex: str) -> str | None:
        """The name of the vault certificate whose SHA-1 thumbprint is ``thumbprint_hex``, if any."""
        wanted = thumbprint_hex.replace(":", "").replace(" ", "").lower()
        try:
            for props in self._certificates().list_properties_of_certificates():
                if props.x509_thumbprint and props.x509_thumbprint.hex() == wanted:
                    return props.name
        except Exception as exc:  # mapped like reads
            raise self._error(exc, f"certificates (thumbprint {wanted})") from exc
        return None

    def _error(self, exc: Exception, name: str) -> AuthError:
        context = {"name": name, "vault": self.vault_url, "identity": self._identity_label}
        return key_vault_error(exc, **context)


def key_vault_error(exc: Exception, **context: Any) -> AuthError:
    """Map an azure-identity/azure-keyvault exception to the catalogue's AuthError."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
    )

    text = str(exc)
    if isinstance(exc, ValueError) and "challenge resource" in text:
        return auth_error("ChallengeResourceMismatch", step=STEP, detail=text.split(".")[0], **context)
    # CredentialUnavailableError (no HTTP response of its own) is how the managed identity fails.
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) in (None, 0):
        code = (
            "ManagedIdentityNotFound"
            if "Unable to load the proper Managed Identity" in text
            else "ManagedIdentityUnavailable"
        )
        return auth_error(code, step="managed_identity", detail=_first_line(text), **context)
    if isinstance(exc, ServiceRequestError):
        return auth_error("KeyVaultUnreachable", step=STEP, detail=_first_line(text), **context)
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None) or ""
        inner = getattr(error, "innererror", None) or {}
        inner_code = inner.get("code") if isinstance(inner, dict) else None
        message = _first_line(getattr(error, "message", None) or text)
        if status == 404:
            found = code if code in {"SecretNotFound", "CertificateNotFound"} else "SecretNotFound"
            return auth_error(found, step=STEP, detail=message, status=status, **context)
        if status == 403:
            return auth_error(inner_code or code or "Forbidden", step=STEP, detail=message, status=status, **context)
        if status == 401:
            if isinstance(exc, ClientAuthenticationError) and "Managed Identity" in text:
                return auth_error("ManagedIdentityUnavailable", step="managed_identity", detail=message, **context)
            return auth_error("KeyVaultUnauthorized", step=STEP, detail=message, status=status, **context)
        if status == 429 or (status or 0) >= 500:
            return auth_error("KeyVaultUnavailable", step=STEP, detail=f"HTTP {status}", status=status, **context)
    return auth_error(type(exc).__name__, step=STEP, detail=_first_line(text), **context)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def enabled_versions(client: SecretClient, name: str) -> list[str]:
    """The ids of the enabled versions of secret ``name``, newest first."""
    listed = [p for p in client.list_properties_of_secret_versions(name) if p.enabled]
    listed.sort(key=lambda p: p.created_on.timestamp() if p.created_on else 0.0, reverse=True)
    return [str(p.version) for p in listed if p.version]


def secret_value(name: str, bundle: Any) -> SecretValue:
    """An SDK ``KeyVaultSecret`` as a SecretValue; its value is registered for redaction first."""
    value = bundle.value or ""
    register_secret(value)
    props = bundle.properties
    return SecretValue(
        name=name,
        value=value,
        version=props.version,
        content_type=props.content_type,
        expires_on=props.expires_on,
        tags=dict(props.tags or {}),
    )
