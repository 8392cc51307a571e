"""Settings: every app setting dvbridge reads, validated once, in one frozen object.

All setting names live in :class:`EnvVars`. :meth:`Settings.from_env` collects *every* problem
before raising one :class:`~shared.errors.ConfigError`, so a deployment is fixed in one pass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigError

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
DEFAULT_SECRET_CACHE_TTL_S = 900  # at most one Key Vault GET per secret per 15 minutes
DEFAULT_SECRET_MAX_STALE_S = 3600  # serve a cached secret this long past its TTL while Key Vault is down
DEFAULT_TOKEN_REFRESH_MARGIN_S = 300  # a token handed to an invocation lives at least this long
DEFAULT_HTTP_TIMEOUT_S = 30
KEY_VAULT_REFERENCE_PREFIX = "@Microsoft.KeyVault("

_TENANT_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)+$")
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class EnvVars:
    """Names of the app settings (environment variables) dvbridge reads."""

    DATAVERSE_URL = "DATAVERSE_URL"
    DATAVERSE_TENANT_ID = "DATAVERSE_TENANT_ID"
    DATAVERSE_CLIENT_ID = "DATAVERSE_CLIENT_ID"
    DATAVERSE_CLIENT_SECRET_NAME = "DATAVERSE_CLIENT_SECRET_NAME"  # noqa: S105 - a setting's name  # nosec B105
    DATAVERSE_CERTIFICATE_NAME = "DATAVERSE_CERTIFICATE_NAME"
    KEY_VAULT_URL = "KEY_VAULT_URL"
    AZURE_CLIENT_ID = "AZURE_CLIENT_ID"
    ENTRA_AUTHORITY_HOST = "ENTRA_AUTHORITY_HOST"
    ENTRA_INSTANCE_DISCOVERY = "ENTRA_INSTANCE_DISCOVERY"
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE = "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"
    GRAPH_URL = "GRAPH_URL"
    STORAGE = "AzureWebJobsStorage"
    SECRET_CACHE_TTL_S = "SECRET_CACHE_TTL_S"  # noqa: S105 - a setting's name  # nosec B105
    SECRET_MAX_STALE_S = "SECRET_MAX_STALE_S"  # noqa: S105 - a setting's name  # nosec B105
    TOKEN_REFRESH_MARGIN_S = "TOKEN_REFRESH_MARGIN_S"  # noqa: S105 - a setting's name  # nosec B105
    HTTP_TIMEOUT_S = "HTTP_TIMEOUT_S"
    DATAVERSE_TABLES = "DATAVERSE_TABLES"


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :meth:`from_env`; never mutate."""

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
    secret_cache_ttl_s: int = DEFAULT_SECRET_CACHE_TTL_S
    secret_max_stale_s: int = DEFAULT_SECRET_MAX_STALE_S
    token_refresh_margin_s: int = DEFAULT_TOKEN_REFRESH_MARGIN_S
    http_timeout_s: int = DEFAULT_HTTP_TIMEOUT_S
    tables: tuple[str, ...] = ()  # entity sets the app reads and writes (the doctor probes their privileges)

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
        import os

        source = os.environ if env is None else env
        reader = _Reader(source)
        dataverse_url = reader.https_url(
            EnvVars.DATAVERSE_URL,
            example="https://contoso.crm4.dynamics.com",
            root_only=True,
        )
        tenant_id = reader.tenant(EnvVars.DATAVERSE_TENANT_ID)
        client_id = reader.guid(EnvVars.DATAVERSE_CLIENT_ID, required=True)
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
        key_vault_url = reader.https_url(
            EnvVars.KEY_VAULT_URL, example="https://contoso-dvbridge.vault.azure.net", root_only=True
        )
        mi_client_id = reader.guid(EnvVars.AZURE_CLIENT_ID, required=False)
        authority_host = reader.https_url(
            EnvVars.ENTRA_AUTHORITY_HOST,
            example=DEFAULT_AUTHORITY_HOST,
            default=DEFAULT_AUTHORITY_HOST,
            root_only=True,
        )
        graph_url = reader.https_url(
            EnvVars.GRAPH_URL, example=DEFAULT_GRAPH_URL, default=DEFAULT_GRAPH_URL, root_only=True
        )
        settings = cls(
            dataverse_url=dataverse_url,
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret_name=secret_name,
            certificate_name=cert_name,
            key_vault_url=key_vault_url,
            managed_identity_client_id=mi_client_id,
            authority_host=authority_host,
            instance_discovery=reader.boolean(EnvVars.ENTRA_INSTANCE_DISCOVERY, default=True),
            verify_challenge_resource=reader.boolean(EnvVars.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE, default=True),
            graph_url=graph_url,
            storage_connection=reader.optional(EnvVars.STORAGE),
            secret_cache_ttl_s=reader.seconds(EnvVars.SECRET_CACHE_TTL_S, DEFAULT_SECRET_CACHE_TTL_S),
            secret_max_stale_s=reader.seconds(EnvVars.SECRET_MAX_STALE_S, DEFAULT_SECRET_MAX_STALE_S),
            token_refresh_margin_s=reader.seconds(
                EnvVars.TOKEN_REFRESH_MARGIN_S, DEFAULT_TOKEN_REFRESH_MARGIN_S, maximum=3000
            ),
            http_timeout_s=reader.seconds(EnvVars.HTTP_TIMEOUT_S, DEFAULT_HTTP_TIMEOUT_S, minimum=1),
            tables=reader.entity_sets(EnvVars.DATAVERSE_TABLES),
        )
        if reader.problems:
            raise ConfigError(reader.problems)
        return settings


class _Reader:
    """Reads settings and records problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def problem(self, text: str, name: str | None = None) -> None:
        self.problems.append(text)
        if name:
            self._failed.add(name)

    def has_problem_for(self, *names: str) -> bool:
        return any(n in self._failed for n in names)

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        if not value:
            return None
        if value.startswith(KEY_VAULT_REFERENCE_PREFIX):
            self.problem(_unresolved_reference(name, value), name)
            return None
        return value

    def required(self, name: str, example: str) -> str:
        value = self.optional(name)
        if value is None and name not in self._failed:
            self.problem(f"{name} is missing: set it, e.g. {name}={example}", name)
        return value or ""

    def https_url(self, name: str, *, example: str, default: str | None = None, root_only: bool) -> str:
        value = self.optional(name)
        if value is None:
            if default is not None and name not in self._failed:
                return default
            if name not in self._failed:
                self.problem(f"{name} is missing: set it, e.g. {name}={example}", name)
            return ""
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            self.problem(f"{name}={value!r} is not an https URL: use e.g. {name}={example}", name)
            return ""
        if root_only and parts.path.strip("/"):
            self.problem(
                f"{name}={value!r} has a path ({parts.path!r}): give only scheme and host, e.g. {name}={example}",
                name,
            )
            return ""
        return f"{parts.scheme}://{parts.netloc}"

    def guid(self, name: str, *, required: bool) -> str:
        value = self.optional(name)
        example = "00000000-0000-0000-0000-000000000000 (the application (client) ID from Entra)"
        if value is None:
            if required and name not in self._failed:
                self.problem(f"{name} is missing: set it, e.g. {name}={example}", name)
            return ""
        try:
            return str(uuid.UUID(value))
        except ValueError:
            self.problem(f"{name}={value!r} is not a GUID: use e.g. {name}={example}", name)
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
                f"{name}={value!r} is a multi-tenant alias: client credentials need the real tenant,"
                f" e.g. {name}={example}",
                name,
            )
        else:
            self.problem(f"{name}={value!r} is neither a GUID nor a domain: use e.g. {name}={example}", name)
        return ""

    def secret_name(self, name: str) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        if not _SECRET_NAME.match(value):
            self.problem(
                f"{name}={value!r} is not a Key Vault object name (1-127 letters, digits and dashes):"
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
        bad = [s for s in sets if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s)]
        if bad:
            self.problem(
                f"{name}={value!r} has invalid entity set names {bad}:"
                f" list entity set names, e.g. {name}=accounts,contacts",
                name,
            )
            return ()
        return sets

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        self.problem(f"{name}={value!r} is not a boolean: use {name}=true or {name}=false", name)
        return default

    def seconds(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problem(f"{name}={value!r} is not a whole number of seconds: e.g. {name}={default}", name)
            return default
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.problem(f"{name}={number} is out of range: use {bounds} seconds, e.g. {name}={default}", name)
            return default
        return number


def _unresolved_reference(name: str, value: str) -> str:
    # The platform leaves the raw reference in the variable when it cannot resolve it.
    shown = value if len(value) <= 160 else value[:157] + "..."
    return (
        f"{name} holds an unresolved Key Vault reference ({shown}). The platform could not read it. Usual"
        " causes: the app's managed identity lacks the 'Key Vault Secrets User' role on the vault; the"
        " secret name or version in the reference does not exist or is disabled; the vault's firewall"
        " blocks the platform; keyVaultReferenceIdentity names another identity; or the reference syntax"
        " is wrong (@Microsoft.KeyVault(SecretUri=https://<vault>.vault.azure.net/secrets/<name>/))."
        " The portal shows the reason under Configuration > the setting > Key Vault Reference details."
    )
