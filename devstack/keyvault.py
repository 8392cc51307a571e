"""Key Vault (HTTPS): secrets and certificates REST with the bearer challenge and RBAC, and certificate renewal.

Shapes are the JSON that azure-keyvault-secrets/-certificates 4.12 parse (every field they read).
Any ``api-version`` is accepted. Real Key Vault does not block reads of an expired secret, and
neither do we; a disabled version answers 403 ``Forbidden``/``SecretDisabled``, read by version or as the
latest (Key Vault does not fall back to an older enabled version).

RBAC: each identity's role assignments are the vault-wide ``key_vault_roles`` and the scoped ones
(``{role, scope: secrets/<name>}``); an assignment grants its role's data actions (Azure's built-in role
definitions, wildcards included) on every object its scope covers. A certificate's backing secret is a secret:
reading it checks ``secrets/getSecret/action`` at the scope ``secrets/<certificate name>``, so a role scoped to
``certificates/<name>`` does not cover it (as users report of real Key Vault; see docs/devstack.md).

Renewal: a certificate whose policy has an ``AutoRenew`` lifetime action gets a new version (a new RSA key, a
self-signed certificate with the same subject, ``validity_months`` long) once the world clock
(``time.time() + world.clock_offset_s``) passes the trigger of its latest version, or at once on
``POST /_devstack/control {"renew_certificate": "<name>"}``. The new key is the vault's only: it is not added to
any app registration (the app uploads it with Graph ``addKey``).
"""

from __future__ import annotations

import base64
import calendar
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.common import bearer_token, correlation_id, epoch, json_error, stats_routes
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer
from devstack.world import (
    CertificatePolicy,
    KeyCredential,
    ManagedIdentity,
    SecretVersion,
    World,
    new_version_id,
    self_signed_certificate,
)

if TYPE_CHECKING:
    from devstack.vault_events import VaultEventEmitter

VAULT_RESOURCE = "https://vault.azure.net"
DEFAULT_PAGE_SIZE = 25
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90
# The vault's ARM identity (ARM_URL's permissions, the Event Grid topic, Key Vault's 403 messages).
SUBSCRIPTION_ID = "00000000-0000-0000-0000-00000000d5b1"
RESOURCE_GROUP = "rg-dvbridge"
PEM_CONTENT_TYPE = "application/x-pem-file"
PKCS12_CONTENT_TYPE = "application/x-pkcs12"

# Data actions (Azure's "Microsoft.KeyVault" permissions; docs/devstack.md lists the sources).
GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
READ_SECRET_METADATA = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
SET_SECRET = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
UPDATE_SECRET = "Microsoft.KeyVault/vaults/secrets/update/action"
READ_CERTIFICATE = "Microsoft.KeyVault/vaults/certificates/read"
UPDATE_CERTIFICATE = "Microsoft.KeyVault/vaults/certificates/update/action"


@dataclass(frozen=True)
class RoleDefinition:
    """A built-in role's permissions, as ``GET .../roleDefinitions/{id}`` returns them."""

    id: str
    actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()

    def permission(self) -> dict[str, list[str]]:
        return {
            "actions": list(self.actions),
            "notActions": list(self.not_actions),
            "dataActions": list(self.data_actions),
            "notDataActions": list(self.not_data_actions),
        }

    def grants(self, action: str) -> bool:
        return any(action_matches(p, action) for p in self.data_actions) and not any(
            action_matches(p, action) for p in self.not_data_actions
        )


# The control-plane actions every Key Vault data-plane role except the two "User" roles carries.
_KV_MANAGEMENT_ACTIONS = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
)

# Azure built-in role definitions (learn.microsoft.com/azure/role-based-access-control/built-in-roles/security).
ROLE_DEFINITIONS: dict[str, RoleDefinition] = {
    "Key Vault Administrator": RoleDefinition(
        "00482a5a-887f-4fb3-b363-3b7fe8e74483", _KV_MANAGEMENT_ACTIONS, ("Microsoft.KeyVault/vaults/*",)
    ),
    "Key Vault Secrets Officer": RoleDefinition(
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7", _KV_MANAGEMENT_ACTIONS, ("Microsoft.KeyVault/vaults/secrets/*",)
    ),
    "Key Vault Secrets User": RoleDefinition(
        "4633458b-17de-408a-b874-0445c86b69e6", (), (GET_SECRET, READ_SECRET_METADATA)
    ),
    "Key Vault Certificates Officer": RoleDefinition(
        "a4417e6f-fecd-4de8-b567-7b0420556985",
        _KV_MANAGEMENT_ACTIONS,
        (
            "Microsoft.KeyVault/vaults/certificatecas/*",
            "Microsoft.KeyVault/vaults/certificates/*",
            "Microsoft.KeyVault/vaults/certificatecontacts/write",
        ),
    ),
    "Key Vault Certificate User": RoleDefinition(
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        (),
        (READ_CERTIFICATE, GET_SECRET, READ_SECRET_METADATA, "Microsoft.KeyVault/vaults/keys/read"),
    ),
    "Key Vault Reader": RoleDefinition(
        "21090545-7ca7-4776-b22c-e363652d74d2",
        _KV_MANAGEMENT_ACTIONS,
        ("Microsoft.KeyVault/vaults/*/read", READ_SECRET_METADATA),
    ),
}


def action_matches(pattern: str, action: str) -> bool:
    """Azure RBAC action matching: case-insensitive, ``*`` stands for any run of characters (``/`` included)."""
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return re.match(regex, action, re.IGNORECASE) is not None


def vault_resource_id(vault_name: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.KeyVault/vaults/{vault_name}"
    )


def assignments(identity: ManagedIdentity | None) -> list[tuple[str, str]]:
    """``(role, scope)`` pairs; scope ``""`` is the vault itself, else ``secrets/<name>`` and the like."""
    if identity is None:
        return []
    return [(role, "") for role in identity.key_vault_roles] + list(identity.key_vault_scoped_roles)


def scope_covers(scope: str, resource: str) -> bool:
    """Whether an assignment at ``scope`` (relative to the vault) applies to ``resource`` (relative too)."""
    scope, resource = scope.strip("/").lower(), resource.strip("/").lower()
    return not scope or resource == scope or resource.startswith(scope + "/")


def covering_roles(identity: ManagedIdentity | None, resource: str) -> list[tuple[str, str]]:
    return [(role, scope) for role, scope in assignments(identity) if scope_covers(scope, resource)]


def is_allowed(identity: ManagedIdentity | None, action: str, resource: str) -> bool:
    return any(
        (definition := ROLE_DEFINITIONS.get(role)) is not None and definition.grants(action)
        for role, _ in covering_roles(identity, resource)
    )


def world_now(world: World) -> datetime:
    """The world clock: real time plus the clock offset tests set through Entra's control endpoint."""
    return datetime.fromtimestamp(time.time() + world.clock_offset_s, UTC).replace(microsecond=0)


def _add_months(when: datetime, months: int) -> datetime:
    month_index = when.month - 1 + months
    year, month = when.year + month_index // 12, month_index % 12 + 1
    return when.replace(year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1]))


def renewal_due_at(policy: CertificatePolicy | None, version: SecretVersion) -> datetime | None:
    """When the policy's first ``AutoRenew`` action fires for ``version``; None: it never does."""
    if policy is None or version.expires is None:
        return None
    moments = []
    for action in policy.lifetime_actions:
        if action.action_type != "AutoRenew":
            continue
        if action.days_before_expiry is not None:
            moments.append(version.expires - timedelta(days=action.days_before_expiry))
        elif action.lifetime_percentage is not None and version.not_before is not None:
            moments.append(
                version.not_before + (version.expires - version.not_before) * action.lifetime_percentage / 100
            )
    return min(moments) if moments else None


@dataclass
class CertificateRenewer:
    """Key Vault's certificate renewal: new versions for due ``AutoRenew`` lifetime actions, and on request."""

    world: World
    issuer: TokenIssuer
    on_new_version: Callable[[str, SecretVersion], None] | None = None
    renewals: list[dict[str, Any]] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def due(self, now: datetime) -> list[tuple[str, str]]:
        """``(certificate name, latest version)`` of every certificate whose latest version is due."""
        with self.world.lock:
            found = []
            for name, versions in self.world.certificates.items():
                latest = versions[-1] if versions else None
                if latest is None or not latest.enabled or latest.certificate is None:
                    continue
                at = renewal_due_at(self.world.certificate_policies.get(name), latest)
                if at is not None and at <= now:
                    found.append((name, latest.version))
            return found

    def check(self, now: datetime) -> list[SecretVersion]:
        """Renew what is due (the background loop calls this every second)."""
        return [v for name, latest in self.due(now) if (v := self._renew(name, now, only_if_latest=latest))]

    def renew(self, name: str, now: datetime) -> SecretVersion:
        """A new version now, whatever the policy's trigger; KeyError for an unknown certificate."""
        version = self._renew(name, now, only_if_latest=None)
        assert version is not None
        return version

    def _renew(self, name: str, now: datetime, *, only_if_latest: str | None) -> SecretVersion | None:
        with self._guard:  # one renewal at a time; the key is generated outside the world lock
            with self.world.lock:
                versions = self.world.certificates.get(name)
                if not versions:
                    raise KeyError(name)
                latest = versions[-1]
                if only_if_latest is not None and latest.version != only_if_latest:
                    return None
                policy = self.world.certificate_policies.get(name) or CertificatePolicy()
                previous = latest.certificate
                assert previous is not None
            credential = _self_signed(previous, policy, now)
            value = credential.pfx_base64() if latest.content_type == PKCS12_CONTENT_TYPE else credential.pem_bundle()
            # For the secret-hygiene scan: the new private key (PEM and PFX), never the public certificate.
            self.issuer.record(credential.pem_bundle().split("-----BEGIN CERTIFICATE-----")[0])
            self.issuer.record(credential.pfx_base64())
            version = SecretVersion(
                version=new_version_id(),
                value=value,
                content_type=latest.content_type,
                tags=dict(latest.tags),
                enabled=True,
                not_before=credential.start,
                expires=credential.end,
                created=now,
                updated=now,
                managed=True,
                certificate=credential,
            )
            with self.world.lock:
                self.world.certificates[name].append(version)
            self.renewals.append({"name": name, "version": version.version, "previous": latest.version})
        if self.on_new_version is not None:
            self.on_new_version(name, version)
        return version


def _self_signed(previous: KeyCredential, policy: CertificatePolicy, now: datetime) -> KeyCredential:
    key, certificate = self_signed_certificate(
        previous.certificate.subject, now, _add_months(now, policy.validity_months), policy.key_size
    )
    return KeyCredential(
        key_id=str(uuid.uuid4()),
        display_name=previous.display_name,
        private_key=key,
        certificate=certificate,
        registered=False,  # Entra does not know it until the app uploads it (Graph addKey)
    )


@dataclass
class VaultContext:
    world: World
    issuer: TokenIssuer
    stats: Stats
    base_url: str
    authority_host: str
    events: VaultEventEmitter | None = None
    renewer: CertificateRenewer = field(init=False)

    def __post_init__(self) -> None:
        self.renewer = CertificateRenewer(self.world, self.issuer, on_new_version=self._new_version)

    def _new_version(self, name: str, version: SecretVersion) -> None:
        if self.events is not None:
            self.events.new_version_created("certificate", name, version)

    def challenge_headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer authorization="{self.authority_host}/{self.world.tenant_id}", resource="{VAULT_RESOURCE}"'
            )
        }


def _kv_error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def _attributes(v: SecretVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": v.enabled,
        "created": epoch(v.created),
        "updated": epoch(v.updated),
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RECOVERABLE_DAYS,
    }
    if v.not_before is not None:
        attrs["nbf"] = epoch(v.not_before)
    if v.expires is not None:
        attrs["exp"] = epoch(v.expires)
    return attrs


def _epoch_attr(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), UTC)


def keyvault_app(ctx: VaultContext) -> Starlette:
    def authorize(request: Request, action: str, resource: str) -> tuple[ManagedIdentity | None, Response | None]:
        token = bearer_token(request)
        if token is None:
            return None, json_error(
                401,
                _kv_error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                ctx.challenge_headers(),
            )
        try:
            claims = ctx.issuer.verify(token, VAULT_RESOURCE)
        except jwt.ExpiredSignatureError:
            return None, json_error(
                401, _kv_error("Unauthorized", "AKV10022: Token is expired."), ctx.challenge_headers()
            )
        except jwt.InvalidAudienceError:
            return None, json_error(
                401, _kv_error("Unauthorized", "AKV10022: Invalid audience."), ctx.challenge_headers()
            )
        except jwt.InvalidTokenError as exc:
            return None, json_error(
                401,
                _kv_error("Unauthorized", f"AKV10032: Invalid token: {type(exc).__name__}."),
                ctx.challenge_headers(),
            )
        identity = ctx.world.identity_by_object_id(str(claims.get("oid", "")))
        with ctx.world.lock:
            allowed = is_allowed(identity, action, resource)
        if not allowed:
            caller = f"appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}"
            target = f"{vault_resource_id(ctx.world.vault_name)}/{resource}".lower()
            message = (
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or"
                " role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: {caller}\r\nAction: '{action}'\r\n"
                f"Resource: '{target}'\r\nAssignment: (not found)\r\n"
                f"DenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {ctx.world.vault_name};"
                "location=devstack\r\n"
            )
            return identity, json_error(403, _kv_error("Forbidden", message, "ForbiddenByRbac"))
        return identity, None

    def find_secret(name: str) -> list[SecretVersion] | None:
        return ctx.world.secrets.get(name) or ctx.world.certificates.get(name)

    def pick(versions: list[SecretVersion], version: str) -> SecretVersion | None:
        return versions[-1] if not version else next((v for v in versions if v.version == version), None)

    def secret_bundle(name: str, v: SecretVersion, *, with_value: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": f"{ctx.base_url}/secrets/{name}/{v.version}",
            "attributes": _attributes(v),
            "tags": v.tags,
        }
        if with_value:
            body["value"] = v.value
        if v.content_type:
            body["contentType"] = v.content_type
        if v.managed:
            body["managed"] = True
            body["kid"] = f"{ctx.base_url}/keys/{name}/{v.version}"
        return body

    def not_found(kind: str, name: str) -> Response:
        code = "SecretNotFound" if kind == "secret" else "CertificateNotFound"
        return json_error(
            404,
            _kv_error(
                code,
                f"A {kind} with (name/id) {name} was not found in this key vault. If you recently deleted this {kind}"
                f" you may be able to recover it using the correct recovery command. For help resolving this issue,"
                " please see https://go.microsoft.com/fwlink/?linkid=2125182",
            ),
        )

    def managed_by_certificate(name: str) -> Response:
        # UNCONFIRMED: the exact status and words of Key Vault refusing a write to a certificate's backing secret.
        return json_error(
            409,
            _kv_error("Conflict", f"Secret {name} is managed by a certificate: change the certificate instead."),
        )

    async def get_secret(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version") or ""
        _, denied = authorize(request, GET_SECRET, f"secrets/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = find_secret(name)
            if not versions:
                return not_found("secret", name)
            chosen = pick(versions, version)
            if chosen is None:
                return not_found("secret", f"{name}/{version}")
            if not chosen.enabled:
                return json_error(
                    403,
                    _kv_error("Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"),
                )
            return JSONResponse(secret_bundle(name, chosen))

    async def update_secret(request: Request) -> Response:
        """``PATCH /secrets/{name}/{version?}``: attributes, tags and content type; never the value."""
        name = request.path_params["name"]
        version = request.path_params.get("version") or ""
        _, denied = authorize(request, UPDATE_SECRET, f"secrets/{name}")
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, _kv_error("BadParameter", "The request body is not valid JSON."))
        if not isinstance(body, dict):
            return json_error(400, _kv_error("BadParameter", "The request body must be a JSON object."))
        with ctx.world.lock:
            if name in ctx.world.certificates and name not in ctx.world.secrets:
                return managed_by_certificate(name)
            versions = ctx.world.secrets.get(name)
            if not versions:
                return not_found("secret", name)
            chosen = pick(versions, version)
            if chosen is None:
                return not_found("secret", f"{name}/{version}")
            attrs = body.get("attributes") or {}
            if attrs.get("enabled") is not None:
                chosen.enabled = bool(attrs["enabled"])
            if attrs.get("nbf") is not None:
                chosen.not_before = _epoch_attr(attrs["nbf"])
            if attrs.get("exp") is not None:
                chosen.expires = _epoch_attr(attrs["exp"])
            if body.get("tags") is not None:
                chosen.tags = {str(k): str(v) for k, v in dict(body["tags"]).items()}
            if body.get("contentType") is not None:
                chosen.content_type = str(body["contentType"]) or None
            chosen.updated = datetime.now(UTC)
            return JSONResponse(secret_bundle(name, chosen, with_value=False))

    def page(request: Request, items: list[dict[str, Any]], path: str) -> dict[str, Any]:
        size = int(request.query_params.get("maxresults", DEFAULT_PAGE_SIZE))
        start = int(request.query_params.get("$skiptoken", 0))
        body: dict[str, Any] = {"value": items[start : start + size], "nextLink": None}
        if start + size < len(items):
            query = urlencode(
                {
                    "api-version": request.query_params.get("api-version", "7.5"),
                    "$skiptoken": start + size,
                    "maxresults": size,
                }
            )
            body["nextLink"] = f"{ctx.base_url}{path}?{query}"
        return body

    def secret_item(name: str, v: SecretVersion, *, with_version: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": f"{ctx.base_url}/secrets/{name}" + (f"/{v.version}" if with_version else ""),
            "attributes": _attributes(v),
            "tags": v.tags,
        }
        if v.content_type:
            item["contentType"] = v.content_type
        if v.managed:
            item["managed"] = True
        return item

    async def list_secrets(request: Request) -> Response:
        _, denied = authorize(request, READ_SECRET_METADATA, "secrets")
        if denied is not None:
            return denied
        with ctx.world.lock:
            everything = {**ctx.world.certificates, **ctx.world.secrets}
            items = [secret_item(n, vs[-1], with_version=False) for n, vs in sorted(everything.items())]
        return JSONResponse(page(request, items, "/secrets"))

    async def list_versions(request: Request) -> Response:
        name = request.path_params["name"]
        _, denied = authorize(request, READ_SECRET_METADATA, f"secrets/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = find_secret(name)
            if not versions:
                return not_found("secret", name)
            items = [secret_item(name, v, with_version=True) for v in versions]
        return JSONResponse(page(request, items, f"/secrets/{name}/versions"))

    async def set_secret(request: Request) -> Response:
        name = request.path_params["name"]
        _, denied = authorize(request, SET_SECRET, f"secrets/{name}")
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, _kv_error("BadParameter", "The request body is not valid JSON."))
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            return json_error(400, _kv_error("BadParameter", "Property 'value' is required."))
        attrs = body.get("attributes") or {}
        now = datetime.now(UTC)
        version = SecretVersion(
            version=new_version_id(),
            value=body["value"],
            content_type=body.get("contentType"),
            tags={str(k): str(v) for k, v in dict(body.get("tags") or {}).items()},
            enabled=bool(attrs.get("enabled", True)),
            not_before=_epoch_attr(attrs["nbf"]) if attrs.get("nbf") else None,
            expires=_epoch_attr(attrs["exp"]) if attrs.get("exp") else None,
            created=now,
            updated=now,
        )
        ctx.issuer.record(version.value)
        with ctx.world.lock:
            if name in ctx.world.certificates and name not in ctx.world.secrets:
                return managed_by_certificate(name)
            ctx.world.secrets.setdefault(name, []).append(version)
        return JSONResponse(secret_bundle(name, version))

    def policy_json(name: str, v: SecretVersion) -> dict[str, Any]:
        key = v.certificate
        assert key is not None
        policy = ctx.world.certificate_policies.get(name) or CertificatePolicy()
        actions = []
        for action in policy.lifetime_actions:
            trigger: dict[str, int] = {}
            if action.days_before_expiry is not None:
                trigger["days_before_expiry"] = action.days_before_expiry
            if action.lifetime_percentage is not None:
                trigger["lifetime_percentage"] = action.lifetime_percentage
            actions.append({"trigger": trigger, "action": {"action_type": action.action_type}})
        first = ctx.world.certificates[name][0]
        return {
            "id": f"{ctx.base_url}/certificates/{name}/policy",
            "key_props": {"exportable": True, "kty": "RSA", "key_size": policy.key_size, "reuse_key": False},
            "secret_props": {"contentType": v.content_type},
            "x509_props": {
                "subject": key.certificate.subject.rfc4514_string(),
                "key_usage": ["digitalSignature", "keyEncipherment"],
                "validity_months": policy.validity_months,
            },
            "lifetime_actions": actions,
            "issuer": {"name": "Self"},
            "attributes": {"enabled": True, "created": epoch(first.created), "updated": epoch(first.updated)},
        }

    def certificate_bundle(name: str, v: SecretVersion) -> dict[str, Any]:
        key = v.certificate
        assert key is not None
        der = key.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "id": f"{ctx.base_url}/certificates/{name}/{v.version}",
            "kid": f"{ctx.base_url}/keys/{name}/{v.version}",
            "sid": f"{ctx.base_url}/secrets/{name}/{v.version}",
            "x5t": base64.urlsafe_b64encode(key.sha1).decode().rstrip("="),
            "cer": base64.b64encode(der).decode(),
            "attributes": _attributes(v),
            "tags": v.tags,
            "policy": policy_json(name, v),
        }

    def certificate_item(name: str, v: SecretVersion, *, with_version: bool) -> dict[str, Any]:
        key = v.certificate
        assert key is not None
        return {
            "id": f"{ctx.base_url}/certificates/{name}" + (f"/{v.version}" if with_version else ""),
            "x5t": base64.urlsafe_b64encode(key.sha1).decode().rstrip("="),
            "attributes": _attributes(v),
            "tags": v.tags,
        }

    async def get_certificate(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version") or ""
        _, denied = authorize(request, READ_CERTIFICATE, f"certificates/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = ctx.world.certificates.get(name)
            chosen = pick(versions, version) if versions else None
            if chosen is None:
                return not_found("certificate", name if not version else f"{name}/{version}")
            return JSONResponse(certificate_bundle(name, chosen))

    async def get_certificate_policy(request: Request) -> Response:
        name = request.path_params["name"]
        _, denied = authorize(request, READ_CERTIFICATE, f"certificates/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = ctx.world.certificates.get(name)
            if not versions:
                return not_found("certificate", name)
            return JSONResponse(policy_json(name, versions[-1]))

    async def list_certificate_versions(request: Request) -> Response:
        name = request.path_params["name"]
        _, denied = authorize(request, READ_CERTIFICATE, f"certificates/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = ctx.world.certificates.get(name)
            if not versions:
                return not_found("certificate", name)
            items = [certificate_item(name, v, with_version=True) for v in versions]
        return JSONResponse(page(request, items, f"/certificates/{name}/versions"))

    async def list_certificates(request: Request) -> Response:
        _, denied = authorize(request, READ_CERTIFICATE, "certificates")
        if denied is not None:
            return denied
        with ctx.world.lock:
            items = [
                certificate_item(name, versions[-1], with_version=False)
                for name, versions in sorted(ctx.world.certificates.items())
            ]
        return JSONResponse(page(request, items, "/certificates"))

    async def control(request: Request) -> Response:
        """Test-only: enable/disable a secret (all its versions, or one), renew a certificate now."""
        action = await request.json()
        answer: dict[str, Any] = {"ok": True, "correlationId": correlation_id()}
        with ctx.world.lock:
            if "set_enabled" in action:
                spec = action["set_enabled"]
                for v in ctx.world.secrets.get(spec["name"], []):
                    if spec.get("version") in (None, v.version):
                        v.enabled = bool(spec["enabled"])
        if "renew_certificate" in action:
            name = str(action["renew_certificate"])
            try:
                version = await run_in_threadpool(ctx.renewer.renew, name, world_now(ctx.world))
            except KeyError:
                return not_found("certificate", name)
            assert version.certificate is not None
            answer.update(version=version.version, thumbprint=version.certificate.sha1.hex().upper())
        return JSONResponse(answer)

    async def events(_: Request) -> Response:
        """Test-only: every Event Grid event the vault raised (with its delivery status) and every renewal."""
        sent = ctx.events.snapshot() if ctx.events is not None else []
        return JSONResponse({"events": sent, "renewals": list(ctx.renewer.renewals)})

    routes = [
        Route("/secrets", list_secrets, methods=["GET"]),
        Route("/secrets/", list_secrets, methods=["GET"]),
        Route("/secrets/{name}/versions", list_versions, methods=["GET"]),
        Route("/secrets/{name}", get_secret, methods=["GET"]),
        Route("/secrets/{name}/", get_secret, methods=["GET"]),
        Route("/secrets/{name}/{version}", get_secret, methods=["GET"]),
        Route("/secrets/{name}", set_secret, methods=["PUT"]),
        Route("/secrets/{name}/", set_secret, methods=["PUT"]),
        Route("/secrets/{name}/", update_secret, methods=["PATCH"]),
        Route("/secrets/{name}/{version}", update_secret, methods=["PATCH"]),
        Route("/certificates", list_certificates, methods=["GET"]),
        Route("/certificates/", list_certificates, methods=["GET"]),
        Route("/certificates/{name}/versions", list_certificate_versions, methods=["GET"]),
        Route("/certificates/{name}/policy", get_certificate_policy, methods=["GET"]),
        Route("/certificates/{name}", get_certificate, methods=["GET"]),
        Route("/certificates/{name}/", get_certificate, methods=["GET"]),
        Route("/certificates/{name}/{version}", get_certificate, methods=["GET"]),
        Route("/_devstack/control", control, methods=["POST"]),
        Route("/_devstack/events", events, methods=["GET"]),
        *stats_routes(ctx.stats),
    ]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))
