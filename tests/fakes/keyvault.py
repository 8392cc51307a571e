"""An in-memory Key Vault behind the surface of ``shared.identity.secret_store.SecretStore``: the vault URL,
secret and certificate properties (the SDK's own ``SecretProperties``/``CertificateProperties``, built from
the JSON Key Vault returns), and ``get(name)`` giving a ``SecretValue``. Failures are the SDK's exceptions
mapped by the real ``key_vault_error``, so callers see the ``AuthError`` production would."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    map_error,
)
from azure.core.pipeline.transport import RequestsTransportResponse
from azure.core.rest import HttpRequest
from azure.keyvault.certificates import CertificateProperties
from azure.keyvault.certificates._generated import models as certificate_models
from azure.keyvault.secrets import SecretProperties
from azure.keyvault.secrets._generated import models as secret_models

from shared.errors import AuthError
from shared.identity.secret_store import SecretValue, key_vault_error
from shared.logging import register_secret

__all__ = ["FakeSecretStore", "vault_http_error"]

# What the generated Key Vault operations map by status before anything reads the body.
_ERROR_MAP: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
}
_EPOCH_FIELDS = {"expires_on": "exp", "not_before": "nbf", "created_on": "created", "updated_on": "updated"}


def vault_http_error(status: int, code: str, message: str = "", inner: str | None = None) -> HttpResponseError:
    """What azure-keyvault raises for a Key Vault error answer (``{"error": {"code", "message", "innererror"}}``)."""
    raw = requests.Response()
    raw.status_code = status
    raw.reason = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}.get(status, "")
    raw.headers["Content-Type"] = "application/json; charset=utf-8"
    error: dict[str, Any] = {"code": code, "message": message or code}
    if inner:
        error["innererror"] = {"code": inner}
    raw._content = json.dumps({"error": error}).encode()
    response = RequestsTransportResponse(HttpRequest("GET", "https://fake.vault.azure.net/secrets"), raw)
    try:
        map_error(status_code=status, response=response, error_map=_ERROR_MAP)
    except HttpResponseError as mapped:
        return mapped
    return HttpResponseError(response=response)


@dataclass
class _Secret:
    value: str
    enabled: bool = True
    expires_on: datetime | None = None
    not_before: datetime | None = None
    created_on: datetime | None = None
    updated_on: datetime | None = None
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    managed: bool = False  # the secret backing a certificate
    version: str = "1"


@dataclass
class _Certificate:
    enabled: bool = True
    expires_on: datetime | None = None
    created_on: datetime | None = None
    updated_on: datetime | None = None
    thumbprint: bytes | None = None
    tags: dict[str, str] = field(default_factory=dict)


class FakeSecretStore:
    """``set_secret``/``set_certificate``/``delete_*`` shape the vault; ``fail(operation, ...)`` makes
    ``list_secrets``, ``list_certificates`` or ``get`` fail the way Key Vault does (403, 429, 5xx...)."""

    def __init__(self, vault_url: str = "https://kv-test.vault.azure.net/", *,
                 identity_label: str = "system-assigned") -> None:  # fmt: skip
        self.vault_url = vault_url
        self._identity_label = identity_label
        self._secrets: dict[str, _Secret] = {}
        self._certificates: dict[str, _Certificate] = {}
        self._failures: dict[str, BaseException] = {}
        self.reads: list[str] = []  # names passed to get(), in order

    # -- shaping the vault -------------------------------------------------------------------------------
    def set_secret(self, name: str, value: str, **properties: Any) -> None:
        """A new version (the latest), like ``SecretClient.set_secret``; properties as in ``_Secret``."""
        old = self._secrets.get(name)
        version = str(int(old.version) + 1) if old else "1"
        self._secrets[name] = _Secret(value, version=version, **properties)

    def set_certificate(self, name: str, **properties: Any) -> None:
        self._certificates[name] = _Certificate(**properties)

    def delete_secret(self, name: str) -> None:
        self._secrets.pop(name, None)

    def delete_certificate(self, name: str) -> None:
        self._certificates.pop(name, None)

    def fail(self, operation: str, status: int, code: str, *, inner: str | None = None, message: str = "") -> None:
        """Until :meth:`heal`, ``operation`` (list_secrets, list_certificates, get) gets this Key Vault answer."""
        if operation not in ("list_secrets", "list_certificates", "get"):
            raise ValueError(f"unknown operation {operation!r}")
        self._failures[operation] = vault_http_error(status, code, message, inner)

    def fail_with(self, operation: str, error: BaseException) -> None:
        """Until :meth:`heal`, ``operation`` raises ``error`` before mapping (e.g. ServiceRequestError)."""
        self._failures[operation] = error

    def heal(self, operation: str | None = None) -> None:
        if operation is None:
            self._failures.clear()
        else:
            self._failures.pop(operation, None)

    # -- the SecretStore surface -------------------------------------------------------------------------
    def list_secret_properties(self) -> list[Any]:
        self._raise("list_secrets", "(list secrets)")
        return [self._secret_properties(name, s) for name, s in self._secrets.items()]

    def list_certificate_properties(self) -> list[Any]:
        self._raise("list_certificates", "(list certificates)")
        return [self._certificate_properties(name, c) for name, c in self._certificates.items()]

    def get(self, name: str) -> SecretValue:
        self.reads.append(name)
        self._raise("get", name)
        secret = self._secrets.get(name)
        if secret is None:
            self._map(vault_http_error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this "
                                       "key vault."), name)  # fmt: skip
        if not secret.enabled:
            self._map(vault_http_error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                                       "SecretDisabled"), name)  # fmt: skip
        register_secret(secret.value)  # as the real store does: a value read is masked in every later log line
        return SecretValue(name=name, value=secret.value, version=secret.version, content_type=secret.content_type,
                           expires_on=secret.expires_on, tags=dict(secret.tags))  # fmt: skip

    def invalidate(self, name: str) -> None:
        pass  # nothing is cached here

    # -- internals ---------------------------------------------------------------------------------------
    def _raise(self, operation: str, name: str) -> None:
        failure = self._failures.get(operation)
        if failure is not None:
            self._map(failure, name)

    def _map(self, exc: BaseException, name: str) -> NoReturn:
        if isinstance(exc, AuthError) or not isinstance(exc, Exception):
            raise exc
        raise key_vault_error(exc, name=name, vault=self.vault_url, identity=self._identity_label) from exc

    def _attributes(self, enabled: bool, values: dict[str, datetime | None]) -> dict[str, Any]:
        attributes: dict[str, Any] = {"enabled": enabled}
        for python_name, wire_name in _EPOCH_FIELDS.items():
            value = values.get(python_name)
            if value is not None:
                attributes[wire_name] = int(value.timestamp())  # Key Vault answers whole epoch seconds
        return attributes

    def _secret_properties(self, name: str, s: _Secret) -> SecretProperties:
        item: dict[str, Any] = {
            "id": f"{self.vault_url.rstrip('/')}/secrets/{name}",
            "attributes": self._attributes(s.enabled, {"expires_on": s.expires_on, "not_before": s.not_before,
                                                       "created_on": s.created_on, "updated_on": s.updated_on}),
        }  # fmt: skip
        if s.tags:
            item["tags"] = dict(s.tags)
        if s.content_type:
            item["contentType"] = s.content_type
        if s.managed:
            item["managed"] = True
        return SecretProperties._from_secret_item(secret_models.SecretItem(item))

    def _certificate_properties(self, name: str, c: _Certificate) -> CertificateProperties:
        item: dict[str, Any] = {
            "id": f"{self.vault_url.rstrip('/')}/certificates/{name}",
            "attributes": self._attributes(c.enabled, {"expires_on": c.expires_on, "created_on": c.created_on,
                                                       "updated_on": c.updated_on}),
        }  # fmt: skip
        if c.tags:
            item["tags"] = dict(c.tags)
        if c.thumbprint:
            item["x5t"] = base64.urlsafe_b64encode(c.thumbprint).decode().rstrip("=")
        return CertificateProperties._from_certificate_item(certificate_models.CertificateItem(item))
