"""The Dataverse credential as read from Key Vault: a client secret or a certificate.

A Key Vault *secret* may hold the bare client secret or a Dataverse connection string; a Key Vault
*certificate*'s backing secret holds PEM (key + certificate) or base64 PFX, depending on its
content type. Whatever the form, :func:`parse_credential` returns one :class:`DataverseCredential`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.config import Settings
from shared.errors import ConfigError, CredentialFormatError
from shared.identity.connection_string import looks_like_connection_string, parse_connection_string
from shared.identity.diagnosis import diagnose
from shared.identity.secret_store import SecretStore, SecretValue
from shared.logging import register_secret

PEM_CONTENT_TYPE = "application/x-pem-file"
PFX_CONTENT_TYPE = "application/x-pkcs12"
PASSWORD_AUTH_TYPES = {"oauth", "office365", "ad", "ifd"}


@dataclass(frozen=True, repr=False)
class DataverseCredential:
    """What MSAL needs to authenticate the app. Secret material never appears in a repr."""

    kind: str  # "secret" or "certificate"
    source: str  # Key Vault object it came from
    secret: str | None = None
    private_key_pem: str | None = None
    certificate_pem: str | None = None
    thumbprint: str | None = None  # SHA-1, lower-case hex
    not_after: datetime | None = None
    client_id: str | None = None  # from a connection string, when it names one
    url: str | None = None  # from a connection string, when it names one

    def __repr__(self) -> str:
        return (
            f"DataverseCredential(kind={self.kind!r}, source={self.source!r}, thumbprint={self.thumbprint!r},"
            f" not_after={self.not_after!r}, secret=***)"
        )

    @property
    def fingerprint(self) -> str:
        """A digest of the material: changes when the credential is rotated, reveals nothing."""
        material = (self.secret or "") + (self.private_key_pem or "") + (self.thumbprint or "")
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def msal_credential(self) -> str | dict[str, Any]:
        if self.kind == "secret":
            if self.secret is None:
                raise CredentialFormatError(f"{self.source}: the client secret is empty")
            return self.secret
        return {"private_key": self.private_key_pem, "thumbprint": self.thumbprint}


def load_credential(settings: Settings, store: SecretStore) -> DataverseCredential:
    """Read the configured Key Vault object and parse it. Raises AuthError or CredentialFormatError."""
    name = settings.certificate_name if settings.uses_certificate else settings.client_secret_name
    if name is None:  # Settings.from_env refuses this; kept so -O cannot turn it into a None lookup
        raise ConfigError(["set DATAVERSE_CLIENT_SECRET_NAME or DATAVERSE_CERTIFICATE_NAME"])
    if settings.uses_certificate:
        return certificate_credential(store.get(name))
    secret = store.get(name)
    if looks_like_connection_string(secret.value):
        return connection_string_credential(secret, settings, store)
    if not secret.value.strip():
        raise CredentialFormatError(f"Key Vault secret {secret.name} is empty: store the client secret's Value in it")
    if "-----BEGIN" in secret.value or secret.content_type in {PEM_CONTENT_TYPE, PFX_CONTENT_TYPE}:
        raise CredentialFormatError(
            f"Key Vault secret {secret.name} holds a certificate: set DATAVERSE_CERTIFICATE_NAME={secret.name}"
            " instead of DATAVERSE_CLIENT_SECRET_NAME"
        )
    return DataverseCredential(kind="secret", source=secret.name, secret=secret.value.strip())


def connection_string_credential(secret: SecretValue, settings: Settings, store: SecretStore) -> DataverseCredential:
    pairs = parse_connection_string(secret.value)
    auth_type = pairs.get("authtype", "").lower()
    where = f"Key Vault secret {secret.name} (connection string)"
    if auth_type in PASSWORD_AUTH_TYPES or "password" in pairs:
        refused = diagnose("PasswordAuthRefused", auth_type=pairs.get("authtype") or "OAuth")
        raise CredentialFormatError(f"{where}: {refused.cause} Fix: {refused.fix}")
    url = pairs.get("url", "").rstrip("/") or None
    if url and url.lower() != settings.dataverse_url.lower():
        raise CredentialFormatError(
            f"{where}: Url={url} differs from DATAVERSE_URL={settings.dataverse_url}; make them the same environment"
        )
    client_id = pairs.get("clientid") or None
    if client_id and client_id.lower() != settings.client_id.lower():
        raise CredentialFormatError(
            f"{where}: ClientId={client_id} differs from DATAVERSE_CLIENT_ID={settings.client_id};"
            " make them the same app registration"
        )
    if auth_type == "clientsecret":
        value = pairs.get("clientsecret", "")
        if not value:
            raise CredentialFormatError(f"{where}: AuthType=ClientSecret needs ClientSecret=<the secret's Value>")
        register_secret(value)
        return DataverseCredential(kind="secret", source=secret.name, secret=value, client_id=client_id, url=url)
    if auth_type == "certificate":
        thumbprint = pairs.get("thumbprint", "").replace(":", "").replace(" ", "").lower()
        if not thumbprint:
            raise CredentialFormatError(f"{where}: AuthType=Certificate needs Thumbprint=<SHA-1 thumbprint>")
        # The thumbprint names a Windows certificate store entry; on Functions the certificate lives
        # in Key Vault, so find it there by thumbprint.
        name = store.find_certificate_name(thumbprint)
        if name is None:
            raise CredentialFormatError(
                f"{where}: no certificate with Thumbprint={thumbprint} in the vault; import the certificate"
                " (with its private key) into Key Vault"
            )
        credential = certificate_credential(store.get(name))
        return DataverseCredential(**{**credential.__dict__, "client_id": client_id, "url": url})
    raise CredentialFormatError(
        f"{where}: AuthType={pairs.get('authtype') or '<missing>'} is not supported;"
        " use AuthType=ClientSecret or AuthType=Certificate"
    )


def certificate_credential(secret: SecretValue) -> DataverseCredential:
    """Parse a certificate's backing secret (PEM or base64 PFX) into key, certificate and thumbprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    where = f"Key Vault certificate {secret.name}"
    value = secret.value.strip()
    if secret.content_type == PFX_CONTENT_TYPE or "-----BEGIN" not in value:
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
        except (ValueError, binascii.Error) as exc:
            raise CredentialFormatError(
                f"{where}: the value is neither PEM nor a password-less base64 PFX ({type(exc).__name__});"
                " re-import the certificate with its private key"
            ) from exc
    else:
        try:
            key = serialization.load_pem_private_key(value.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise CredentialFormatError(
                f"{where}: no readable unencrypted private key in the PEM; import the certificate with its"
                " private key (Key Vault exports PEM as key + certificate)"
            ) from exc
        start = value.find("-----BEGIN CERTIFICATE-----")
        cert = x509.load_pem_x509_certificate(value[start:].encode()) if start >= 0 else None
    if key is None or cert is None:
        raise CredentialFormatError(f"{where}: it must hold both the private key and the certificate")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    register_secret(key_pem)
    return DataverseCredential(
        kind="certificate",
        source=secret.name,
        private_key_pem=key_pem,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        thumbprint=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - x5t is SHA-1 by definition  # nosec B303
        not_after=cert.not_valid_after_utc,
    )
