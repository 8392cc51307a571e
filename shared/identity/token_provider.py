"""Dataverse access tokens: MSAL client credentials, one ConfidentialClientApplication per worker.

:meth:`DataverseTokenProvider.token_for_invocation` is called once at the start of an invocation.
It answers from MSAL's cache while the token has at least ``refresh_margin_s`` to live, so warm
invocations cost no network call; MSAL itself treats tokens with under 5 minutes left as expired.

Rotation: the credential is re-read through the SecretStore (TTL-cached), and the MSAL app is
rebuilt when it changed, sharing the token cache. On AADSTS7000215/7000222 the Key Vault entry
is invalidated and re-read at once, and the request retried once with the new credential.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.errors import AuthError
from shared.identity.credential import DataverseCredential, load_credential
from shared.identity.diagnosis import aadsts_code, auth_error
from shared.identity.secret_store import SecretStore
from shared.logging import log_event
from shared.telemetry import record_token

if TYPE_CHECKING:
    import msal

logger = logging.getLogger(__name__)

STEP = "entra_token"
ROTATION_CODES = {"AADSTS7000215", "AADSTS7000222", "AADSTS700027"}
RENEWED_CERTIFICATE_CODE = "AADSTS700027"  # the key is not registered (yet): a renewed certificate
MAX_PREVIOUS_CERTIFICATES = 2  # earlier certificate versions tried when Entra refuses the latest
MSAL_EXPIRY_MARGIN_S = 300  # MSAL's own: a cached token with less left is never returned


@dataclass(frozen=True, repr=False)
class AccessToken:
    """A bearer token and when it expires. The token never appears in a repr or str."""

    value: str
    expires_on: float  # epoch seconds
    source: str  # "cache" or "identity_provider"

    def __repr__(self) -> str:
        return f"AccessToken(expires_on={self.expires_on:.0f}, source={self.source!r}, value=***)"

    __str__ = __repr__

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_on - (time.time() if now is None else now)

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"


class DataverseTokenProvider:
    """Hands out Dataverse tokens for invocations; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: SecretStore | None,
        *,
        fixed: DataverseCredential | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``fixed``: this credential only, never re-read from Key Vault (``store`` may then be None): how the
        rotation proves a new credential with an MSAL app of its own, sharing no cache with the worker's."""
        if store is None and fixed is None:
            raise ValueError("a token provider needs a secret store or a fixed credential")
        self._settings = settings
        self._store = store
        self._fixed = fixed
        self._pinned: tuple[DataverseCredential, float] | None = None  # an earlier certificate version, until
        self._clock = clock
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_fingerprint: str | None = None
        self._cache: msal.TokenCache | None = None
        self.credential: DataverseCredential | None = None

    def __repr__(self) -> str:
        return (
            f"DataverseTokenProvider(client_id={self._settings.client_id!r}, scope={self._settings.dataverse_scope!r})"
        )

    @property
    def scopes(self) -> list[str]:
        return [self._settings.dataverse_scope]

    def token_for_invocation(self, *, force_refresh: bool = False) -> AccessToken:
        """A token valid for at least the refresh margin. Raises AuthError with cause and fix."""
        with self._lock:
            app = self._application()
            if force_refresh:
                self._evict(app)
            try:
                return self._acquire(app)
            except AuthError as exc:
                if exc.code not in ROTATION_CODES or self._store is None:
                    raise
                # The credential may have been rotated in Key Vault since we cached it: re-read now.
                self._store.invalidate(self._settings.credential_name)
                previous = self._app_fingerprint
                app = self._application()
                if self._app_fingerprint == previous:
                    fallback = self._previous_certificate(exc) if exc.code == RENEWED_CERTIFICATE_CODE else None
                    if fallback is None:
                        raise
                    return fallback
                log_event(logger, "dataverse_credential_reloaded", reason=exc.code)
                return self._acquire(app)

    def invalidate_token(self) -> None:
        """Drop cached tokens (after Dataverse answered 401): the next call asks Entra."""
        with self._lock:
            if self._app is not None:
                self._evict(self._app)

    # -- internals -----------------------------------------------------------------------------
    def _previous_certificate(self, failure: AuthError) -> AccessToken | None:
        """Key Vault renewed the certificate and Entra does not accept the new one yet (the rotation uploads it
        and Entra takes a while): the newest earlier version that still gets a token is used, pinned for the
        secret cache TTL, after which the latest is tried again."""
        store = self._store
        if store is None or not self._settings.uses_certificate or self._settings.certificate_name is None:
            return None
        from shared.identity.credential import certificate_credential

        name = self._settings.certificate_name
        for version in store.enabled_versions(name)[1 : 1 + MAX_PREVIOUS_CERTIFICATES]:
            credential = certificate_credential(store.get_version(name, version))
            pinned, self._fixed = self._fixed, credential
            try:
                token = self._acquire(self._application())
            except AuthError:
                self._fixed = pinned
                continue
            self._fixed = None
            self._pinned = (credential, self._clock() + self._settings.secret_cache_ttl_s)
            log_event(logger, "dataverse_certificate_fallback", logging.WARNING, version=version, reason=failure.code)
            return token
        return None

    def _application(self) -> msal.ConfidentialClientApplication:
        credential = self._fixed
        if credential is None and self._pinned is not None:
            if self._clock() < self._pinned[1]:
                credential = self._pinned[0]
            else:
                self._pinned = None
        if credential is None and self._store is not None:  # the constructor saw to it that one is set
            credential = load_credential(self._settings, self._store)
        if credential is None:
            raise ValueError("a token provider needs a secret store or a fixed credential")
        if self._app is not None and credential.fingerprint == self._app_fingerprint:
            return self._app
        import msal
        import requests

        if self._cache is None:
            self._cache = msal.TokenCache()
        try:
            app = msal.ConfidentialClientApplication(
                self._settings.client_id,
                authority=self._settings.authority,
                client_credential=credential.msal_credential(),
                instance_discovery=self._settings.instance_discovery,
                token_cache=self._cache,
                timeout=self._settings.http_timeout_s,
            )
        except ValueError as exc:
            raise self._discovery_error(exc) from exc
        except (msal.exceptions.MsalServiceError, RuntimeError) as exc:  # OIDC discovery answered 5xx
            raise auth_error("EntraUnavailable", step=STEP, detail=f"OIDC discovery: {exc}"[:200]) from exc
        except requests.RequestException as exc:
            raise auth_error(
                "EntraUnreachable", step=STEP, detail=type(exc).__name__, url=self._settings.authority
            ) from exc
        if self._app is not None:
            log_event(logger, "msal_app_rebuilt", reason="credential changed", source=credential.source)
        self._app, self._app_fingerprint, self.credential = app, credential.fingerprint, credential
        return app

    def _acquire(self, app: msal.ConfidentialClientApplication) -> AccessToken:
        result = self._call(app)
        if result.get("expires_in", 0) < self._settings.token_refresh_margin_s:
            self._evict(app)
            result = self._call(app)
        source = str(result.get("token_source", "identity_provider"))
        if source != "cache":
            log_event(logger, "dataverse_token_acquired", expires_in_s=result.get("expires_in"))
        record_token("cache" if source == "cache" else "entra")
        return AccessToken(result["access_token"], self._clock() + float(result.get("expires_in", 0)), source)

    def _call(self, app: msal.ConfidentialClientApplication) -> dict[str, Any]:
        import msal
        import requests

        try:
            result: dict[str, Any] = app.acquire_token_for_client(self.scopes)
        except msal.exceptions.MsalServiceError as exc:
            raise auth_error("EntraUnavailable", step=STEP, detail=str(exc)[:200]) from exc
        except requests.RequestException as exc:
            raise auth_error(
                "EntraUnreachable", step=STEP, detail=type(exc).__name__, url=self._settings.authority
            ) from exc
        if "access_token" in result:
            return result
        raise self._result_error(result)

    def _result_error(self, result: dict[str, Any]) -> AuthError:
        description = str(result.get("error_description") or result.get("error") or "")
        code = aadsts_code(description, result.get("error_codes")) or str(result.get("error") or "unknown_error")
        return auth_error(
            code,
            step=STEP,
            detail=description.split("Trace ID:")[0].strip()[:400],
            client_id=self._settings.client_id,
            tenant_id=self._settings.tenant_id,
            resource=self._settings.dataverse_url,
            name=self._settings.credential_name,
        )

    def _discovery_error(self, exc: ValueError) -> AuthError:
        """MSAL's constructor fails on the OIDC document with a ValueError; read the body to say why."""
        from shared.errors import DownstreamError
        from shared.outgoing_http import ENTRA_DISCOVERY, HttpCaller

        url = f"{self._settings.authority}/v2.0/.well-known/openid-configuration"
        policy = ENTRA_DISCOVERY.with_timeout(self._settings.http_timeout_s)
        try:
            body = HttpCaller(None, policy).send("GET", url, raise_for_status=False).json()
        except (DownstreamError, ValueError):
            body = {}
        code = aadsts_code(body.get("error_description"), body.get("error_codes")) if isinstance(body, dict) else None
        detail = str(body.get("error_description", "")).split("Trace ID:")[0].strip() if isinstance(body, dict) else ""
        return auth_error(
            code or "AuthorityDiscoveryFailed",
            step=STEP,
            detail=detail or str(exc)[:200],
            url=self._settings.authority,
            tenant_id=self._settings.tenant_id,
            client_id=self._settings.client_id,
        )

    def _evict(self, app: msal.ConfidentialClientApplication) -> None:
        cache = app.token_cache
        for item in list(cache.search(cache.CredentialType.ACCESS_TOKEN, target=self.scopes)):
            cache.remove_at(item)
