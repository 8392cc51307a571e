"""The devstack world: tenant, app registrations, managed identities and vault contents.

Built from a scenario (YAML) at start-up; the servers read and change it under one lock.
Certificates named in the scenario are generated here, so no key material lives in the repo.
"""

from __future__ import annotations

import base64
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from devstack.timeexpr import resolve_time

SCENARIO_DIR = Path(__file__).parent / "scenarios"
RSA_KEY_BITS = 2048
DEFAULT_TOKEN_LIFETIME_S = 3599
DEFAULT_MI_TOKEN_LIFETIME_S = 86400  # App Service hands out 24 h managed-identity tokens
SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~._-"


class ScenarioError(ValueError):
    """The scenario file is malformed; the message names the entry."""


@dataclass
class PasswordCredential:
    key_id: str
    display_name: str
    value: str
    start: datetime
    end: datetime
    # Entra's propagation: the token endpoint accepts the password from this (world-clock) time on;
    # None: at once (the scenario's own credentials).
    accepted_after: datetime | None = None

    @property
    def hint(self) -> str:
        return self.value[:3]


@dataclass
class KeyCredential:
    key_id: str
    display_name: str
    private_key: rsa.RSAPrivateKey | None  # None: uploaded through Graph addKey (only its public part)
    certificate: x509.Certificate
    registered: bool = True  # False: exists (e.g. in the vault) but was never uploaded to the app
    accepted_after: datetime | None = None  # as PasswordCredential.accepted_after
    graph_display_name: str | None = None  # Graph's displayName; None: the certificate's subject

    @property
    def start(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def end(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def sha1(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is defined as SHA-1

    @property
    def sha256(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA256())

    def _key(self) -> rsa.RSAPrivateKey:
        if self.private_key is None:
            raise ValueError(f"key credential {self.key_id} was uploaded without its private key")
        return self.private_key

    def pem_bundle(self) -> str:
        key = self._key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert = self.certificate.public_bytes(serialization.Encoding.PEM)
        return (key + cert).decode()

    def pfx_base64(self) -> str:
        blob = pkcs12.serialize_key_and_certificates(
            self.display_name.encode(), self._key(), self.certificate, None, serialization.NoEncryption()
        )
        return base64.b64encode(blob).decode()


@dataclass
class Application:
    name: str
    app_id: str
    object_id: str
    display_name: str
    passwords: list[PasswordCredential] = field(default_factory=list)
    keys: list[KeyCredential] = field(default_factory=list)
    consent_missing: bool = False  # answers AADSTS65001 (injectable consent failure)
    app_roles: dict[str, list[str]] = field(default_factory=dict)  # resource -> roles in the token
    owners: list[str] = field(default_factory=list)  # object ids of the owning service principals


@dataclass
class ManagedIdentity:
    name: str
    kind: str  # "system" or "user"
    client_id: str
    object_id: str
    key_vault_roles: list[str]  # assigned at the vault's scope
    graph_app_roles: list[str]
    # (role, scope) assigned below the vault: scope "secrets/<name>" or "certificates/<name>"
    key_vault_scoped_roles: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    enabled: bool
    not_before: datetime | None
    expires: datetime | None
    created: datetime
    updated: datetime
    managed: bool = False
    certificate: KeyCredential | None = None


LIFETIME_ACTION_TYPES = ("AutoRenew", "EmailContacts")
DAYS_PER_VALIDITY_MONTH = 27  # Key Vault: days_before_expiry <= validity_months * 27


@dataclass
class LifetimeAction:
    """One of a certificate policy's ``lifetime_actions``: what Key Vault does, and when."""

    action_type: str  # "AutoRenew" or "EmailContacts"
    days_before_expiry: int | None = None
    lifetime_percentage: int | None = None


@dataclass
class CertificatePolicy:
    """A vault certificate's management policy (issuer Self; the subject is the current version's)."""

    validity_months: int = 12
    lifetime_actions: list[LifetimeAction] = field(default_factory=list)
    key_size: int = RSA_KEY_BITS


@dataclass
class World:
    tenant_id: str
    tenant_name: str
    applications: dict[str, Application]
    identities: list[ManagedIdentity]
    secrets: dict[str, list[SecretVersion]]  # name -> versions, newest last
    certificates: dict[str, list[SecretVersion]]  # name -> versions (backing secret data), newest last
    vault_name: str
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S
    refresh_in_s: int | None = None
    mi_token_lifetime_s: int = DEFAULT_MI_TOKEN_LIFETIME_S
    error_status: dict[str, int] = field(default_factory=dict)
    extra_resources: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    clock_offset_s: float = 0.0
    credential_propagation_s: float = 0.0  # a password/key added through Graph works this long after
    certificate_policies: dict[str, CertificatePolicy] = field(default_factory=dict)  # by certificate name
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- lookups -------------------------------------------------------------------------------
    def application(self, app_id: str) -> Application | None:
        return next((a for a in self.applications.values() if a.app_id == app_id), None)

    def application_by_object_id(self, object_id: str) -> Application | None:
        return next((a for a in self.applications.values() if a.object_id == object_id), None)

    def identity(self, client_id: str | None) -> ManagedIdentity | None:
        if client_id is None:
            return next((i for i in self.identities if i.kind == "system"), None)
        return next((i for i in self.identities if i.client_id == client_id), None)

    def identity_by_object_id(self, object_id: str) -> ManagedIdentity | None:
        return next((i for i in self.identities if i.object_id == object_id), None)

    def every_secret_value(self) -> list[str]:
        """All secret material the world holds (for secret-hygiene scans)."""
        values = [p.value for a in self.applications.values() for p in a.passwords]
        values += [v.value for versions in self.secrets.values() for v in versions]
        for app in self.applications.values():
            for key in app.keys:
                if key.private_key is None:  # uploaded through Graph: nothing secret here
                    continue
                values.append(key.pem_bundle().split("-----BEGIN CERTIFICATE-----")[0])
                values.append(key.pfx_base64())
        return values


def new_secret_value() -> str:
    """A client-secret-shaped random value (Entra secrets are ~40 characters with a '~')."""
    body = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(37))
    return f"{body[:3]}8Q~{body[3:]}"


def new_version_id() -> str:
    return uuid.uuid4().hex


def self_signed_certificate(
    subject: x509.Name, start: datetime, end: datetime, key_size: int = RSA_KEY_BITS
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A new key and a self-signed certificate for it: the world's certificates and Key Vault's renewals."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def load_scenario(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping at the top level")
    return data


def build_world(scenario: dict[str, Any], now: datetime | None = None) -> World:
    """Build the world from a parsed scenario; relative times are resolved against ``now``."""
    now = now or datetime.now(UTC)

    def when(value: Any, default: str) -> datetime:
        return resolve_time(value if value is not None else default, now)

    tenant = scenario.get("tenant") or {}
    entra = scenario.get("entra") or {}
    applications: dict[str, Application] = {}
    for entry in scenario.get("applications") or []:
        name = entry["name"]
        app = Application(
            name=name,
            app_id=str(entry.get("app_id") or uuid.uuid4()),
            object_id=str(entry.get("object_id") or uuid.uuid4()),
            display_name=entry.get("display_name", name),
            consent_missing=bool(entry.get("consent_missing", False)),
            app_roles={k: list(v) for k, v in (entry.get("app_roles") or {}).items()},
        )
        for pw in entry.get("password_credentials") or []:
            app.passwords.append(
                PasswordCredential(
                    key_id=str(pw.get("key_id") or uuid.uuid4()),
                    display_name=pw.get("display_name", "secret"),
                    value=pw.get("value") or new_secret_value(),
                    start=when(pw.get("start"), "-30d"),
                    end=when(pw.get("end"), "+180d"),
                )
            )
        for kc in entry.get("key_credentials") or []:
            start, end = when(kc.get("start"), "-1d"), when(kc.get("end"), "+365d")
            common_name = f"{name}-{kc.get('display_name', 'cert')}"
            key, cert = self_signed_certificate(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), start, end
            )
            app.keys.append(
                KeyCredential(
                    key_id=str(kc.get("key_id") or uuid.uuid4()),
                    display_name=kc.get("display_name", "cert"),
                    private_key=key,
                    certificate=cert,
                    registered=bool(kc.get("registered", True)),
                )
            )
        applications[name] = app

    identities = [
        ManagedIdentity(
            name=mi["name"],
            kind=mi.get("type", "user"),
            client_id=str(mi.get("client_id") or uuid.uuid4()),
            object_id=str(mi.get("object_id") or uuid.uuid4()),
            key_vault_roles=[r for r in mi.get("key_vault_roles") or [] if isinstance(r, str)],
            graph_app_roles=list(mi.get("graph_app_roles") or []),
            key_vault_scoped_roles=[
                (str(r["role"]), str(r["scope"])) for r in mi.get("key_vault_roles") or [] if isinstance(r, dict)
            ],
        )
        for mi in scenario.get("managed_identities") or []
    ]
    for mi in identities:
        for role, scope in mi.key_vault_scoped_roles:
            kind, _, obj = scope.partition("/")
            if kind not in ("secrets", "certificates", "keys") or not obj or "/" in obj:
                raise ScenarioError(
                    f"managed_identities[{mi.name}].key_vault_roles: {role!r} scope is secrets/<name>,"
                    f" certificates/<name> or keys/<name>, not {scope!r}"
                )
    if sum(1 for i in identities if i.kind == "system") > 1:
        raise ScenarioError("managed_identities: at most one entry may have type: system")
    _resolve_owners(scenario, applications, identities)

    vault = scenario.get("vault") or {}
    world = World(
        tenant_id=str(tenant.get("id") or uuid.uuid4()),
        tenant_name=tenant.get("name", "contoso.onmicrosoft.com"),
        applications=applications,
        identities=identities,
        secrets={},
        certificates={},
        vault_name=vault.get("name", "dvbridge-dev"),
        token_lifetime_s=int(entra.get("token_lifetime_s", DEFAULT_TOKEN_LIFETIME_S)),
        refresh_in_s=entra.get("refresh_in_s"),
        mi_token_lifetime_s=int(entra.get("managed_identity_token_lifetime_s", DEFAULT_MI_TOKEN_LIFETIME_S)),
        error_status={str(k): int(v) for k, v in (entra.get("error_status") or {}).items()},
        extra_resources=list(entra.get("resources") or []),
        credential_propagation_s=float(entra.get("credential_propagation_s", 0)),
    )

    for entry in vault.get("secrets") or []:
        world.secrets[entry["name"]] = [_secret_version(entry, world, when, now)]
    for entry in vault.get("certificates") or []:
        credential = _find_key(world, entry["from"], where=f"vault.certificates[{entry['name']}]")
        content_type = entry.get("content_type", "application/x-pem-file")
        value = credential.pfx_base64() if content_type == "application/x-pkcs12" else credential.pem_bundle()
        world.certificates[entry["name"]] = [
            SecretVersion(
                version=new_version_id(),
                value=value,
                content_type=content_type,
                tags=dict(entry.get("tags") or {}),
                enabled=bool(entry.get("enabled", True)),
                not_before=credential.start,
                expires=credential.end,
                created=now,
                updated=now,
                managed=True,
                certificate=credential,
            )
        ]
        world.certificate_policies[entry["name"]] = _certificate_policy(entry)

    for setting, value in (scenario.get("settings") or {}).items():
        world.settings[str(setting)] = _resolve_reference(world, str(value))
    return world


def _certificate_policy(entry: dict[str, Any]) -> CertificatePolicy:
    """``vault.certificates[].policy``: ``validity_months`` and ``lifetime_actions`` as
    ``{trigger: {days_before_expiry: N} | {lifetime_percentage: P}, action: AutoRenew | EmailContacts}``.
    Without a policy: 12 months and an EmailContacts action at 80 % of the lifetime (nothing renews)."""
    where = f"vault.certificates[{entry['name']}].policy"
    spec = entry.get("policy")
    if spec is None:
        return CertificatePolicy(lifetime_actions=[LifetimeAction("EmailContacts", lifetime_percentage=80)])
    validity = int(spec.get("validity_months", 12))
    if validity < 1:
        raise ScenarioError(f"{where}.validity_months: at least 1")
    actions = []
    for item in spec.get("lifetime_actions") or []:
        action = item.get("action")
        action_type = action.get("action_type") if isinstance(action, dict) else action
        if action_type not in LIFETIME_ACTION_TYPES:
            raise ScenarioError(f"{where}.lifetime_actions: action is one of {', '.join(LIFETIME_ACTION_TYPES)}")
        trigger = item.get("trigger") or {}
        days, percentage = trigger.get("days_before_expiry"), trigger.get("lifetime_percentage")
        if (days is None) == (percentage is None):
            raise ScenarioError(f"{where}.lifetime_actions: a trigger has days_before_expiry or lifetime_percentage")
        if days is not None and not 1 <= int(days) <= validity * DAYS_PER_VALIDITY_MONTH:
            raise ScenarioError(f"{where}: days_before_expiry is 1..{validity * DAYS_PER_VALIDITY_MONTH}")
        if percentage is not None and not 1 <= int(percentage) <= 99:
            raise ScenarioError(f"{where}: lifetime_percentage is 1..99")
        actions.append(
            LifetimeAction(
                str(action_type),
                days_before_expiry=int(days) if days is not None else None,
                lifetime_percentage=int(percentage) if percentage is not None else None,
            )
        )
    return CertificatePolicy(validity_months=validity, lifetime_actions=actions)


def _resolve_owners(
    scenario: dict[str, Any], applications: dict[str, Application], identities: list[ManagedIdentity]
) -> None:
    """``applications[].owners``: managed identities (by name) that own the registration, as object ids."""
    by_name = {i.name: i.object_id for i in identities}
    for entry in scenario.get("applications") or []:
        for owner in entry.get("owners") or []:
            if owner not in by_name:
                raise ScenarioError(f"applications[{entry['name']}].owners: unknown managed identity {owner!r}")
            applications[entry["name"]].owners.append(by_name[owner])


def _secret_version(entry: dict[str, Any], world: World, when: Any, now: datetime) -> SecretVersion:
    source = entry.get("value_from")
    if source and "alert_sink" in source:  # the URL of devstack's alert sink for this channel, once it listens
        entry = {**entry, "value": f"devstack-alert-sink:{source['alert_sink']}"}
        source = None
    if source:
        app = _find_app(world, source["app"], where=f"vault.secrets[{entry['name']}]")
        password = next((p for p in app.passwords if p.display_name == source["password"]), None)
        if password is None:
            raise ScenarioError(
                f"vault.secrets[{entry['name']}]: app {app.name} has no password {source['password']!r}"
            )
        value = password.value
        if source.get("format") == "connection_string":
            value = (
                f"AuthType=ClientSecret;Url={source.get('url', 'https://contoso.crm.dynamics.com')};"
                f"ClientId={app.app_id};ClientSecret={value}"
            )
    else:
        value = entry.get("value") or new_secret_value()
    tags = {k: _resolve_reference(world, str(v)) for k, v in (entry.get("tags") or {}).items()}
    return SecretVersion(
        version=new_version_id(),
        value=value,
        content_type=entry.get("content_type", "text/plain"),
        tags=tags,
        enabled=bool(entry.get("enabled", True)),
        not_before=when(entry["not_before"], "") if entry.get("not_before") else None,
        expires=when(entry["expires"], "") if entry.get("expires") else None,
        created=now - timedelta(days=1),
        updated=now - timedelta(days=1),
    )


def _find_app(world: World, name: str, *, where: str) -> Application:
    app = world.applications.get(name)
    if app is None:
        raise ScenarioError(f"{where}: unknown application {name!r}")
    return app


def _find_key(world: World, source: dict[str, Any], *, where: str) -> KeyCredential:
    app = _find_app(world, source["app"], where=where)
    key = next((k for k in app.keys if k.display_name == source["key"]), None)
    if key is None:
        raise ScenarioError(f"{where}: app {app.name} has no key credential {source['key']!r}")
    return key


def _resolve_reference(world: World, value: str) -> str:
    """``app:<name>`` -> app id, ``identity:<name>`` -> client id, ``password:<app>/<name>`` -> key id."""
    kind, _, ref = value.partition(":")
    if kind == "app" and ref in world.applications:
        return world.applications[ref].app_id
    if kind == "identity":
        mi = next((i for i in world.identities if i.name == ref), None)
        if mi is not None:
            return mi.client_id
    if kind == "password":
        app_name, _, pw_name = ref.partition("/")
        app = world.applications.get(app_name)
        if app is not None:
            pw = next((p for p in app.passwords if p.display_name == pw_name), None)
            if pw is not None:
                return pw.key_id
    return value
