"""Per-worker singletons: settings, the secret store and the Dataverse token provider.

A Functions worker process serves many invocations; these objects (and the caches inside them)
live as long as the worker. Every function that talks to Dataverse starts with
:func:`dataverse_token`, and passes the token down.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from shared.config import Settings

if TYPE_CHECKING:
    from shared.identity.secret_store import SecretStore
    from shared.identity.token_provider import AccessToken, DataverseTokenProvider

_lock = threading.Lock()
_settings: Settings | None = None
_store: SecretStore | None = None
_provider: DataverseTokenProvider | None = None


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def build_secret_store(config: Settings) -> SecretStore:
    """A SecretStore for ``config`` on the worker's managed identity."""
    from shared.identity.managed_identity import managed_identity_credential
    from shared.identity.secret_store import SecretStore

    return SecretStore(
        config.key_vault_url,
        managed_identity_credential(config.managed_identity_client_id),
        ttl_s=config.secret_cache_ttl_s,
        max_stale_s=config.secret_max_stale_s,
        verify_challenge_resource=config.verify_challenge_resource,
        identity_label=identity_label(config),
    )


def identity_label(config: Settings) -> str:
    client_id = config.managed_identity_client_id
    return f"user-assigned {client_id}" if client_id else "system-assigned"


def secret_store() -> SecretStore:
    global _store
    config = settings()
    with _lock:
        if _store is None:
            _store = build_secret_store(config)
        return _store


def token_provider() -> DataverseTokenProvider:
    global _provider
    store = secret_store()
    config = settings()
    with _lock:
        if _provider is None:
            from shared.identity.token_provider import DataverseTokenProvider

            _provider = DataverseTokenProvider(config, store)
        return _provider


def dataverse_token() -> AccessToken:
    """The invocation's Dataverse token: call once at the start of an invocation."""
    return token_provider().token_for_invocation()


def reset_worker() -> None:
    """Forget every singleton (tests that change the environment between 'workers')."""
    global _settings, _store, _provider
    from shared.identity.managed_identity import reset_managed_identity

    with _lock:
        _settings, _store, _provider = None, None, None
    reset_managed_identity()
