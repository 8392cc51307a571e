"""One Key Vault object's versions, read and written through the managed identity (the rotation's side of
Key Vault: new versions, disabled versions, a version read by id). Reads for everyday use go through the
TTL-cached :class:`~shared.identity.secret_store.SecretStore`; this class never caches."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from shared.errors import AuthError
from shared.identity.secret_store import (
    KEY_VAULT_RETRY_BACKOFF_MAX_S,
    KEY_VAULT_RETRY_TOTAL,
    SecretValue,
    enabled_versions,
    key_vault_error,
    secret_value,
)
from shared.logging import log_event

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.secrets import SecretClient

logger = logging.getLogger(__name__)


class VaultWriter:
    """Versions of Key Vault secrets (a certificate's versions are its backing secret's versions)."""

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        *,
        verify_challenge_resource: bool = True,
        identity_label: str = "system-assigned",
        secret_client: SecretClient | None = None,
    ) -> None:
        self.vault_url = vault_url
        self._credential = credential
        self._verify_challenge_resource = verify_challenge_resource
        self._identity_label = identity_label
        self._client = secret_client

    def __repr__(self) -> str:
        return f"VaultWriter(vault_url={self.vault_url!r})"

    def _secrets(self) -> SecretClient:
        if self._client is None:
            from azure.keyvault.secrets import SecretClient

            self._client = SecretClient(
                self.vault_url,
                self._credential,
                verify_challenge_resource=self._verify_challenge_resource,
                retry_total=KEY_VAULT_RETRY_TOTAL,
                retry_backoff_max=KEY_VAULT_RETRY_BACKOFF_MAX_S,
            )
        return self._client

    def _error(self, exc: Exception, name: str) -> AuthError:
        return key_vault_error(exc, name=name, vault=self.vault_url, identity=self._identity_label)

    def latest(self, name: str) -> SecretValue:
        """The latest version. Raises AuthError."""
        try:
            return secret_value(name, self._secrets().get_secret(name))
        except Exception as exc:
            raise self._error(exc, name) from exc

    def version(self, name: str, version: str) -> SecretValue:
        """One version by its id. Raises AuthError."""
        try:
            return secret_value(name, self._secrets().get_secret(name, version))
        except Exception as exc:
            raise self._error(exc, f"{name}/{version}") from exc

    def store(
        self, name: str, value: str, *, content_type: str | None, expires_on: datetime | None, tags: dict[str, str]
    ) -> str:
        """A new version holding ``value``; returns its version id. Raises AuthError."""
        try:
            stored = self._secrets().set_secret(
                name, value, content_type=content_type, expires_on=expires_on, tags=tags
            )
        except Exception as exc:
            raise self._error(exc, name) from exc
        log_event(logger, "secret_version_stored", secret=name, version=stored.properties.version)
        return str(stored.properties.version or "")

    def disable(self, name: str, version: str) -> None:
        """Disable one version (reads of it are refused from now on). Raises AuthError."""
        try:
            self._secrets().update_secret_properties(name, version, enabled=False)
        except Exception as exc:
            raise self._error(exc, f"{name}/{version}") from exc
        log_event(logger, "secret_version_disabled", secret=name, version=version)

    def enabled_versions(self, name: str) -> list[str]:
        """The enabled versions' ids, newest first. Raises AuthError."""
        try:
            return enabled_versions(self._secrets(), name)
        except Exception as exc:
            raise self._error(exc, f"{name} (versions)") from exc
