"""Settings: every app setting dvbridge reads, read through the registry and validated at once.

The names, types, defaults and ranges live in :mod:`shared.settings_registry` (``EnvVars`` holds the names).
:class:`SettingsReader` has one typed reader per type there and collects *every* problem before one
:class:`~shared.errors.ConfigError` is raised, so a deployment is fixed in one pass; each problem names the
setting, shows the value only when it cannot be secret, and says what is accepted. :class:`Settings` is
the identity and Dataverse part, built once per worker by :meth:`Settings.from_env`; the capabilities read
theirs with the same readers (``ExpirySettings.from_env``, :func:`read_int` for a single setting). This is
the only module that touches ``os.environ`` (tests/unit/test_settings_registry.py checks it). It runs a little
past 400 lines because one reader per type belongs with the one place that reads the environment.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.settings_registry import (
    DEFAULT_AUTHORITY_HOST,
    DEFAULT_BUDGET_LEASE_S,
    DEFAULT_CONCURRENCY_BUDGET,
    DEFAULT_GRAPH_URL,
    DEFAULT_HTTP_TIMEOUT_S,
    DEFAULT_INSTANCE_CONCURRENCY,
    DEFAULT_SECRET_CACHE_TTL_S,
    DEFAULT_SECRET_MAX_STALE_S,
    DEFAULT_TOKEN_REFRESH_MARGIN_S,
    EnvVars,
    Need,
    Setting,
    Type,
    setting,
)

__all__ = ["EnvVars", "Settings", "SettingsReader", "load_env_file", "read_float", "read_int", "read_text"]

KEY_VAULT_REFERENCE_PREFIX = "@Microsoft.KeyVault("
MAX_SHOWN_CHARS = 160  # a longer value is cut in a message: enough to recognise it, not a wall of text

_TENANT_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)+$")
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_ENTITY_SET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


@dataclass(frozen=True)
class Settings:
    """Validated identity and Dataverse settings. Build with :meth:`from_env`; never mutate."""

    dataverse_url: str
    tenant_id: str
    client_id: str
    client_secret_name: str | None
    certificate_name: str | None
    key_vault_url: str
    managed_identity_client_id: str | None = None
    authority_host: str = DEFAULT_AUTHORITY_HOST
    instance_discovery: bool = True
    verify_challenge_resource: bool = True
    graph_url: str = DEFAULT_GRAPH_URL
    storage_connection: str | None = None
    storage_account_name: str | None = None  # identity-based storage (Azure): the account to reach
    secret_cache_ttl_s: int = DEFAULT_SECRET_CACHE_TTL_S
    secret_max_stale_s: int = DEFAULT_SECRET_MAX_STALE_S
    token_refresh_margin_s: int = DEFAULT_TOKEN_REFRESH_MARGIN_S
    http_timeout_s: int = DEFAULT_HTTP_TIMEOUT_S
    tables: tuple[str, ...] = ()  # entity sets the app reads and writes (the doctor probes their privileges)
    concurrency_budget: int = DEFAULT_CONCURRENCY_BUDGET  # in flight over every instance together
    instance_concurrency: int = DEFAULT_INSTANCE_CONCURRENCY
    budget_shared: bool = True
    budget_lease_s: int = DEFAULT_BUDGET_LEASE_S

    @property
    def dataverse_scope(self) -> str:
        """The client-credentials scope: the environment URL plus ``/.default``."""
        return f"{self.dataverse_url}/.default"

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def credential_name(self) -> str:
        """The Key Vault object holding the Dataverse credential."""
        return self.certificate_name or self.client_secret_name or ""

    @property
    def uses_certificate(self) -> bool:
        return self.certificate_name is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise one ConfigError listing every problem."""
        reader = SettingsReader(env)
        dataverse_url = reader.https_url(EnvVars.DATAVERSE_URL)
        tenant_id = reader.tenant(EnvVars.DATAVERSE_TENANT_ID)
        client_id = reader.guid(EnvVars.DATAVERSE_CLIENT_ID)
        secret_name = reader.secret_name(EnvVars.DATAVERSE_CLIENT_SECRET_NAME)
        cert_name = reader.secret_name(EnvVars.DATAVERSE_CERTIFICATE_NAME)
        if secret_name and cert_name:
            reader.problem(
                f"{EnvVars.DATAVERSE_CLIENT_SECRET_NAME} and {EnvVars.DATAVERSE_CERTIFICATE_NAME} are both set:"
                " set exactly one (the Key Vault secret or certificate that holds the Dataverse credential)"
            )
        elif (
            not secret_name
            and not cert_name
            and not reader.has_problem_for(EnvVars.DATAVERSE_CLIENT_SECRET_NAME, EnvVars.DATAVERSE_CERTIFICATE_NAME)
        ):
            reader.problem(
                f"{EnvVars.DATAVERSE_CLIENT_SECRET_NAME} or {EnvVars.DATAVERSE_CERTIFICATE_NAME} is required:"
                " name the Key Vault secret (e.g. dataverse-client-secret) or certificate (e.g. dataverse-cert)"
                " that holds the Dataverse credential"
            )
        settings = cls(
            dataverse_url=dataverse_url,
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret_name=secret_name,
            certificate_name=cert_name,
            key_vault_url=reader.https_url(EnvVars.KEY_VAULT_URL),
            managed_identity_client_id=reader.guid(EnvVars.AZURE_CLIENT_ID),
            authority_host=reader.https_url(EnvVars.ENTRA_AUTHORITY_HOST),
            instance_discovery=reader.boolean(EnvVars.ENTRA_INSTANCE_DISCOVERY),
            verify_challenge_resource=reader.boolean(EnvVars.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE),
            graph_url=reader.https_url(EnvVars.GRAPH_URL),
            storage_connection=reader.optional(EnvVars.STORAGE),
            storage_account_name=reader.optional(EnvVars.STORAGE_ACCOUNT_NAME),
            secret_cache_ttl_s=reader.integer(EnvVars.SECRET_CACHE_TTL_S),
            secret_max_stale_s=reader.integer(EnvVars.SECRET_MAX_STALE_S),
            token_refresh_margin_s=reader.integer(EnvVars.TOKEN_REFRESH_MARGIN_S),
            http_timeout_s=reader.integer(EnvVars.HTTP_TIMEOUT_S),
            tables=reader.entity_sets(EnvVars.DATAVERSE_TABLES),
            concurrency_budget=reader.integer(EnvVars.DATAVERSE_CONCURRENCY_BUDGET),
            instance_concurrency=reader.integer(EnvVars.DATAVERSE_INSTANCE_CONCURRENCY),
            budget_shared=reader.boolean(EnvVars.DATAVERSE_BUDGET_SHARED),
            budget_lease_s=reader.integer(EnvVars.DATAVERSE_BUDGET_LEASE_S),
        )
        reader.raise_problems()
        return settings


class SettingsReader:
    """Typed readers over the registry: each takes a setting's default, range and choices from its
    declaration and records a problem instead of stopping at the first one (:meth:`raise_problems`)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env: Mapping[str, str] = os.environ if env is None else env
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def problem(self, text: str, name: str | None = None) -> None:
        self.problems.append(text)
        if name:
            self._failed.add(name)

    def has_problem_for(self, *names: str) -> bool:
        return any(n in self._failed for n in names)

    def raise_problems(self) -> None:
        """One ConfigError listing every problem recorded so far, if there is one."""
        if self.problems:
            raise ConfigError(self.problems)

    def raw(self, name: str) -> str:
        """The stripped text, unchecked: for a setting another reader validates, borrowed here only as a
        fallback (a problem with it is reported where it is read for its own sake)."""
        setting(name)  # a KeyError here is an undeclared name
        return self._env.get(name, "").strip()

    def optional(self, name: str) -> str | None:
        """The stripped text, None when unset or empty; an unresolved Key Vault reference is a problem."""
        value = self.raw(name)
        if not value:
            return None
        if value.startswith(KEY_VAULT_REFERENCE_PREFIX):
            self.problem(_unresolved_reference(name, value), name)
            return None
        return value

    def _missing(self, name: str) -> None:
        if name not in self._failed:
            self.problem(f"{name} is missing: set it, e.g. {name}={setting(name).sample}", name)

    def shown(self, name: str, value: str) -> str:
        """``NAME='value'`` in a problem; for a setting that may hold a secret, only the value's shape."""
        if setting(name).secret:
            return f"{name} (a value of {len(value)} characters)"
        return f"{name}={value if len(value) <= MAX_SHOWN_CHARS else value[: MAX_SHOWN_CHARS - 3] + '...'!r}"

    def text(self, name: str) -> str:
        """Text, or the declared default ("" when there is none); checked against the declared choices."""
        value = self.optional(name)
        declared = setting(name)
        if value is None:
            if declared.need is Need.REQUIRED:
                self._missing(name)
            return declared.default or ""
        if declared.choices and value not in declared.choices:
            self.problem(f"{self.shown(name, value)} is not accepted: use {declared.accepted}", name)
            return declared.default or ""
        return value

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, each item stripped, empty items dropped."""
        return tuple(part.strip() for part in self.text(name).split(",") if part.strip())

    def https_url(self, name: str, *, root_only: bool = True) -> str:
        value = self.optional(name)
        declared = setting(name)
        example = declared.sample
        if value is None:
            if declared.default is not None and name not in self._failed:
                return declared.default
            self._missing(name)
            return ""
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            self.problem(f"{self.shown(name, value)} is not an https URL: use e.g. {name}={example}", name)
            return ""
        if root_only and parts.path.strip("/"):
            self.problem(
                f"{self.shown(name, value)} has a path ({parts.path!r}): give only scheme and host,"
                f" e.g. {name}={example}",
                name,
            )
            return ""
        return f"{parts.scheme}://{parts.netloc}"

    def guid(self, name: str) -> str:
        """A GUID in canonical (lower-case) form, "" when unset; missing is a problem when it is required."""
        value = self.optional(name)
        example = "00000000-0000-0000-0000-000000000000 (the application (client) ID from Entra)"
        if value is None:
            if setting(name).need is Need.REQUIRED and name not in self._failed:
                self.problem(f"{name} is missing: set it, e.g. {name}={example}", name)
            return ""
        try:
            return str(uuid.UUID(value))
        except ValueError:
            self.problem(f"{self.shown(name, value)} is not a GUID: use e.g. {name}={example}", name)
            return ""

    def tenant(self, name: str) -> str:
        value = self.optional(name)
        example = "00000000-0000-0000-0000-000000000000 or contoso.onmicrosoft.com"
        if value is None:
            if name not in self._failed:
                self.problem(f"{name} is missing: set the directory (tenant) ID, e.g. {name}={example}", name)
            return ""
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
        if _TENANT_DOMAIN.match(value):
            return value.lower()
        if value.lower() in {"common", "organizations", "consumers"}:
            self.problem(
                f"{self.shown(name, value)} is a multi-tenant alias: client credentials need the real tenant,"
                f" e.g. {name}={example}",
                name,
            )
        else:
            self.problem(f"{self.shown(name, value)} is neither a GUID nor a domain: use e.g. {name}={example}", name)
        return ""

    def secret_name(self, name: str) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        if not _SECRET_NAME.match(value):
            self.problem(
                f"{self.shown(name, value)} is not a Key Vault object name (1-127 letters, digits and dashes):"
                f" e.g. {name}=dataverse-client-secret",
                name,
            )
            return None
        return value

    def entity_sets(self, name: str) -> tuple[str, ...]:
        value = self.optional(name)
        if value is None:
            return ()
        sets = tuple(part.strip() for part in value.split(",") if part.strip())
        bad = [s for s in sets if not _ENTITY_SET.fullmatch(s)]
        if bad:
            self.problem(
                f"{self.shown(name, value)} has invalid entity set names {bad}:"
                f" list entity set names, e.g. {name}=accounts,contacts",
                name,
            )
            return ()
        return sets

    def boolean(self, name: str) -> bool:
        value = self.optional(name)
        default = (setting(name).default or "false") in _TRUE
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(f"{self.shown(name, value)} is not a boolean: use {name}=true or {name}=false", name)
        return default

    def integer(self, name: str) -> int:
        """A whole number within the declared range; unset, the declared default."""
        declared = setting(name)
        default = int(_default_text(declared))
        value = self.optional(name)
        if value is None:
            return default
        unit = f" of {declared.unit}" if declared.unit else ""
        try:
            number = int(value)
        except ValueError:
            self.problem(f"{self.shown(name, value)} is not a whole number{unit}: e.g. {name}={default}", name)
            return default
        if not _within(declared, number):
            self.problem(f"{name}={number} is out of range: use {_bounds(declared)}, e.g. {name}={default}", name)
            return default
        return number

    def number(self, name: str) -> float:
        """A finite number within the declared range; unset, the declared default."""
        declared = setting(name)
        example = _default_text(declared)
        value = self.optional(name)
        if value is None:
            return float(example)
        try:
            number = float(value)
        except ValueError:
            number = math.nan  # refused below, with nan and inf: a comparison with them is always false
        unit = f" of {declared.unit}" if declared.unit else ""
        if not math.isfinite(number):
            self.problem(f"{self.shown(name, value)} is not a number{unit}: e.g. {name}={example}", name)
            return float(example)
        if not _within(declared, number):
            self.problem(f"{name}={value} is out of range: use {_bounds(declared)}, e.g. {name}={example}", name)
            return float(example)
        return number

    def days(self, name: str) -> tuple[int, ...]:
        """Comma-separated whole days, each within the declared range; unset, the declared default."""
        declared = setting(name)
        default = tuple(int(part) for part in _default_text(declared).split(","))
        value = self.optional(name)
        if value is None:
            return default
        try:
            days = tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            days = ()
        if not days or not all(_within(declared, d) for d in days):
            self.problem(
                f"{self.shown(name, value)} is not accepted: use {_bounds(declared)},"
                f" e.g. {name}={_default_text(declared)}",
                name,
            )
            return default
        return days

    def read(self, name: str) -> object:
        """Any setting dvbridge reads, by its declared type (what the registry's own tests call)."""
        readers = {
            Type.HTTPS_URL: self.https_url, Type.GUID: self.guid, Type.TENANT: self.tenant,
            Type.VAULT_OBJECT: self.secret_name, Type.BOOL: self.boolean, Type.INT: self.integer,
            Type.NUMBER: self.number, Type.DAYS: self.days, Type.ENTITY_SETS: self.entity_sets,
            Type.LIST: self.items,
        }  # fmt: skip
        return readers.get(setting(name).type, self.text)(name)


def _default_text(declared: Setting) -> str:
    if declared.default is None:
        raise TypeError(f"{declared.name} is declared without a default; a number needs one")
    return declared.default


def _within(declared: Setting, number: float) -> bool:
    return (declared.minimum is None or number >= declared.minimum) and (
        declared.maximum is None or number <= declared.maximum
    )


def _bounds(declared: Setting) -> str:
    return declared.accepted if declared.minimum is not None else f"a {declared.type}"


def _read_one[T](name: str, env: Mapping[str, str] | None, read: Callable[[SettingsReader, str], T]) -> T:
    reader = SettingsReader(env)
    value = read(reader, name)
    reader.raise_problems()
    return value


def read_int(name: str, env: Mapping[str, str] | None = None) -> int:
    """One whole-number setting, now: a bad or out-of-range value is a ConfigError naming it."""
    return _read_one(name, env, SettingsReader.integer)


def read_float(name: str, env: Mapping[str, str] | None = None) -> float:
    """One number setting, now: a bad or out-of-range value is a ConfigError naming it."""
    return _read_one(name, env, SettingsReader.number)


def read_text(name: str, env: Mapping[str, str] | None = None) -> str:
    """One text setting (or its declared default), now: an unresolved Key Vault reference is a ConfigError."""
    return _read_one(name, env, SettingsReader.text)


def load_env_file(path: str) -> None:
    """Load ``KEY=VALUE`` lines (``.devstack/env``) for a command-line tool; the real environment wins."""
    with open(path, encoding="utf-8") as lines:
        for line in lines.read().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                os.environ.setdefault(key.strip(), value)


def _unresolved_reference(name: str, value: str) -> str:
    # The platform leaves the raw reference in the variable when it cannot resolve it.
    shown = value if len(value) <= MAX_SHOWN_CHARS else value[: MAX_SHOWN_CHARS - 3] + "..."
    return (
        f"{name} holds an unresolved Key Vault reference ({shown}). The platform could not read it. Usual"
        " causes: the app's managed identity lacks the 'Key Vault Secrets User' role on the vault; the"
        " secret name or version in the reference does not exist or is disabled; the vault's firewall"
        " blocks the platform; keyVaultReferenceIdentity names another identity; or the reference syntax"
        " is wrong (@Microsoft.KeyVault(SecretUri=https://<vault>.vault.azure.net/secrets/<name>/))."
        " The portal shows the reason under Configuration > the setting > Key Vault Reference details."
    )
