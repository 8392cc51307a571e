"""The rotation's outside world for unit tests: an app registration behind Graph's add/remove calls, one Key
Vault object's versions, and a credential check that accepts what Entra would (a new credential only after its
propagation delay). Faults: ``fail_next(operation, error)``; a crash is a :class:`Crash` raised after (or
before) an operation took effect."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.errors import AuthError
from shared.identity.credential import DataverseCredential
from shared.identity.secret_store import SecretValue

APP_ID = "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11"
OBJECT_ID = "7e1c9a3b-2d4f-4b6a-8c0e-1f3a5b7c9d02"


class Crash(BaseException):
    """The worker died here (a SIGKILL): nothing after this point runs."""


def refused(code: str, *, step: str = "entra_token", retryable: bool = False, status: int | None = None) -> AuthError:
    return AuthError(code, cause=f"{code} (fake)", fix="fix it (fake)", step=step, retryable=retryable, status=status)


class Faults:
    def __init__(self) -> None:
        self._next: dict[str, list[BaseException]] = {}
        self._after: dict[str, list[BaseException]] = {}

    def fail_next(self, operation: str, error: BaseException) -> None:
        """``operation`` raises ``error`` instead of taking effect."""
        self._next.setdefault(operation, []).append(error)

    def crash_after(self, operation: str) -> None:
        """``operation`` takes effect, then its caller never sees the answer."""
        self._after.setdefault(operation, []).append(Crash(operation))

    def before(self, operation: str) -> None:
        queued = self._next.get(operation)
        if queued:
            raise queued.pop(0)

    def after(self, operation: str) -> None:
        queued = self._after.get(operation)
        if queued:
            raise queued.pop(0)


@dataclass
class Password:
    key_id: str
    display_name: str
    value: str
    end: datetime
    added_at: datetime


@dataclass
class Key:
    key_id: str
    certificate: x509.Certificate
    added_at: datetime

    @property
    def sha1(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1


class FakeApp(Faults):
    """The app registration as Graph shows it, with Graph's credential writes (addKey checks its proof)."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.clock = clock
        self.passwords: list[Password] = []
        self.keys: list[Key] = []
        self.calls: list[str] = []

    def add_existing_password(self, value: str, end: datetime, name: str = "primary") -> Password:
        password = Password(str(uuid.uuid4()), name, value, end, self.clock() - timedelta(days=30))
        self.passwords.append(password)
        return password

    def application(self, app_id: str, select: str = "") -> dict[str, Any]:
        self.calls.append("application")
        self.before("application")
        return {
            "id": OBJECT_ID,
            "appId": app_id,
            "passwordCredentials": [
                {"keyId": p.key_id, "displayName": p.display_name, "hint": p.value[:3],
                 "endDateTime": p.end.strftime("%Y-%m-%dT%H:%M:%SZ"), "secretText": None}
                for p in self.passwords
            ],
            "keyCredentials": [
                {"keyId": k.key_id, "customKeyIdentifier": base64.b64encode(k.sha1).decode(),
                 "type": "AsymmetricX509Cert"}
                for k in self.keys
            ],
        }  # fmt: skip

    def add_password(self, app_id: str, display_name: str, end: datetime) -> dict[str, Any]:
        self.calls.append("add_password")
        self.before("add_password")
        value = f"new{uuid.uuid4().hex}~secret"
        password = Password(str(uuid.uuid4()), display_name, value, end.replace(microsecond=0), self.clock())
        self.passwords.append(password)
        self.after("add_password")
        return {"keyId": password.key_id, "displayName": display_name, "secretText": value, "hint": value[:3],
                "endDateTime": password.end.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip

    def remove_password(self, app_id: str, key_id: str) -> None:
        self.calls.append("remove_password")
        self.before("remove_password")
        if not any(p.key_id == key_id for p in self.passwords):
            raise refused("Request_ResourceNotFound", step="graph", status=404)
        self.passwords = [p for p in self.passwords if p.key_id != key_id]

    def add_key(self, app_id: str, certificate_der: bytes, display_name: str, proof: str) -> dict[str, Any]:
        self.calls.append("add_key")
        self.before("add_key")
        self._check_proof(proof)
        key = Key(str(uuid.uuid4()), x509.load_der_x509_certificate(certificate_der), self.clock())
        self.keys.append(key)
        return {"keyId": key.key_id}

    def remove_key(self, app_id: str, key_id: str, proof: str) -> None:
        self.calls.append("remove_key")
        self.before("remove_key")
        self._check_proof(proof)
        self.keys = [k for k in self.keys if k.key_id != key_id]

    def _check_proof(self, proof: str) -> None:
        x5t = jwt.get_unverified_header(proof).get("x5t", "")
        signer = next((k for k in self.keys if base64.urlsafe_b64encode(k.sha1).decode().rstrip("=") == x5t), None)
        if signer is None:
            raise refused("Authorization_RequestDenied", step="graph", status=403)
        public = signer.certificate.public_key()
        claims = jwt.decode(proof, public, algorithms=["RS256"], audience="00000002-0000-0000-c000-000000000000",  # type: ignore[arg-type]
                            options={"verify_nbf": False, "verify_exp": False})  # fmt: skip
        if claims["iss"] != OBJECT_ID:
            raise refused("Authorization_RequestDenied", step="graph", status=403)


@dataclass
class Version:
    version: str
    value: str
    content_type: str | None
    expires_on: datetime | None
    tags: dict[str, str]
    enabled: bool = True
    created: int = 0


class FakeVersions(Faults):
    """One vault's secrets by version; the latest is the newest, as in Key Vault."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, list[Version]] = {}
        self._counter = 0

    def put(self, name: str, value: str, *, expires_on: datetime | None = None, tags: dict[str, str] | None = None,
            content_type: str | None = "text/plain") -> Version:  # fmt: skip
        self._counter += 1
        version = Version(uuid.uuid4().hex, value, content_type, expires_on, dict(tags or {}), created=self._counter)
        self.objects.setdefault(name, []).append(version)
        return version

    def _value(self, name: str, v: Version) -> SecretValue:
        if not v.enabled:
            raise refused("SecretDisabled", step="key_vault", status=403)
        return SecretValue(name, v.value, v.version, v.content_type, v.expires_on, dict(v.tags))

    def latest(self, name: str) -> SecretValue:
        self.before("latest")
        return self._value(name, self.objects[name][-1])

    def version(self, name: str, version: str) -> SecretValue:
        self.before("version")
        return self._value(name, next(v for v in self.objects[name] if v.version == version))

    def store(self, name: str, value: str, *, content_type: str | None, expires_on: datetime | None,
              tags: dict[str, str]) -> str:  # fmt: skip
        self.before("store")
        stored = self.put(name, value, expires_on=expires_on, tags=tags, content_type=content_type)
        self.after("store")
        return stored.version

    def disable(self, name: str, version: str) -> None:
        self.before("disable")
        next(v for v in self.objects[name] if v.version == version).enabled = False

    def enabled_versions(self, name: str) -> list[str]:
        self.before("enabled_versions")
        return [v.version for v in sorted(self.objects[name], key=lambda v: -v.created) if v.enabled]


class FakeCheck:
    """Entra's token endpoint and Dataverse as the rotation sees them: a credential the app holds gets a token
    once ``propagation`` has passed since it was added; ``dataverse_failure`` makes WhoAmI fail."""

    def __init__(self, app: FakeApp, clock: Callable[[], datetime], propagation: timedelta = timedelta(0)) -> None:
        self.app, self.clock, self.propagation = app, clock, propagation
        self.dataverse_failure: AuthError | None = None
        self.tokens: list[bool] = []

    def accepts(self, credential: DataverseCredential) -> bool:
        ready = self.clock() - self.propagation
        if credential.kind == "secret":
            return any(p.value == credential.secret and p.added_at <= ready for p in self.app.passwords)
        return any(k.sha1.hex() == credential.thumbprint and k.added_at <= ready for k in self.app.keys)

    def token(self, credential: DataverseCredential) -> None:
        ok = self.accepts(credential)
        self.tokens.append(ok)
        if not ok:
            raise refused("AADSTS7000215" if credential.kind == "secret" else "AADSTS700027")

    def dataverse(self, credential: DataverseCredential) -> str:
        if self.dataverse_failure is not None:
            raise self.dataverse_failure
        return "whoami: ok"


class FakeLeases:
    def __init__(self) -> None:
        self.held: set[str] = set()

    def __call__(self, name: str) -> Any:
        if name in self.held:
            return None
        self.held.add(name)
        leases = self

        class Held:
            def release(self) -> None:
                leases.held.discard(name)

        return Held()


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 12, 1, 8, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def certificate(common_name: str, start: datetime, days: int) -> tuple[str, x509.Certificate]:
    """A key (PEM) and self-signed certificate, as Key Vault's self-signed issuer makes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(start + timedelta(days=days)).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return (pem + cert.public_bytes(serialization.Encoding.PEM)).decode(), cert


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


__all__ = ["Clock", "Crash", "FakeApp", "FakeCheck", "FakeLeases", "FakeVersions", "certificate", "refused", "replace"]
