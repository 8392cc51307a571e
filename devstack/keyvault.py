"""Key Vault (HTTPS): secrets and certificates REST with the bearer challenge and RBAC.

Shapes are the JSON that azure-keyvault-secrets/-certificates 4.12 parse (every field they read).
Any ``api-version`` is accepted. Real Key Vault does not block reads of an expired secret, and
neither do we; a disabled one answers 403 ``SecretDisabled``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.common import bearer_token, correlation_id, epoch, json_error, stats_routes
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer
from devstack.world import ManagedIdentity, SecretVersion, World, new_version_id

VAULT_RESOURCE = "https://vault.azure.net"
DEFAULT_PAGE_SIZE = 25
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90

GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
READ_SECRET_METADATA = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
SET_SECRET = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
READ_CERTIFICATE = "Microsoft.KeyVault/vaults/certificates/read"

# Built-in data-plane roles and the actions dvbridge exercises (Azure built-in role definitions).
ROLE_ACTIONS: dict[str, set[str]] = {
    "Key Vault Administrator": {GET_SECRET, READ_SECRET_METADATA, SET_SECRET, READ_CERTIFICATE},
    "Key Vault Secrets Officer": {GET_SECRET, READ_SECRET_METADATA, SET_SECRET},
    "Key Vault Secrets User": {GET_SECRET, READ_SECRET_METADATA},
    "Key Vault Certificates Officer": {READ_CERTIFICATE, READ_SECRET_METADATA},
    "Key Vault Certificate User": {READ_CERTIFICATE, GET_SECRET, READ_SECRET_METADATA},
    "Key Vault Reader": {READ_SECRET_METADATA, READ_CERTIFICATE},
}


@dataclass
class VaultContext:
    world: World
    issuer: TokenIssuer
    stats: Stats
    base_url: str
    authority_host: str

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
        allowed: set[str] = set()
        for role in identity.key_vault_roles if identity else []:
            allowed |= ROLE_ACTIONS.get(role, set())
        if action not in allowed:
            caller = f"appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}"
            message = (
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or"
                " role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: {caller}\r\nAction: '{action}'\r\n"
                f"Resource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/devstack/providers/"
                f"microsoft.keyvault/vaults/{ctx.world.vault_name}/{resource}'\r\nAssignment: (not found)\r\n"
                f"DenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {ctx.world.vault_name};"
                "location=devstack\r\n"
            )
            return identity, json_error(403, _kv_error("Forbidden", message, "ForbiddenByRbac"))
        return identity, None

    def find_secret(name: str) -> list[SecretVersion] | None:
        return ctx.world.secrets.get(name) or ctx.world.certificates.get(name)

    def secret_bundle(name: str, v: SecretVersion) -> dict[str, Any]:
        body: dict[str, Any] = {
            "value": v.value,
            "id": f"{ctx.base_url}/secrets/{name}/{v.version}",
            "attributes": _attributes(v),
            "tags": v.tags,
        }
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
            chosen = versions[-1] if not version else next((v for v in versions if v.version == version), None)
            if chosen is None:
                return not_found("secret", f"{name}/{version}")
            if not chosen.enabled:
                return json_error(
                    403,
                    _kv_error("Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"),
                )
            return JSONResponse(secret_bundle(name, chosen))

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
            tags=dict(body.get("tags") or {}),
            enabled=bool(attrs.get("enabled", True)),
            not_before=datetime.fromtimestamp(attrs["nbf"], UTC) if attrs.get("nbf") else None,
            expires=datetime.fromtimestamp(attrs["exp"], UTC) if attrs.get("exp") else None,
            created=now,
            updated=now,
        )
        ctx.issuer.record(version.value)
        with ctx.world.lock:
            ctx.world.secrets.setdefault(name, []).append(version)
        return JSONResponse(secret_bundle(name, version))

    def certificate_bundle(name: str, v: SecretVersion) -> dict[str, Any]:
        key = v.certificate
        assert key is not None
        der = key.certificate.public_bytes(serialization.Encoding.DER)
        subject = key.certificate.subject.rfc4514_string()
        return {
            "id": f"{ctx.base_url}/certificates/{name}/{v.version}",
            "kid": f"{ctx.base_url}/keys/{name}/{v.version}",
            "sid": f"{ctx.base_url}/secrets/{name}/{v.version}",
            "x5t": base64.urlsafe_b64encode(key.sha1).decode().rstrip("="),
            "cer": base64.b64encode(der).decode(),
            "attributes": _attributes(v),
            "tags": v.tags,
            "policy": {
                "id": f"{ctx.base_url}/certificates/{name}/policy",
                "key_props": {"exportable": True, "kty": "RSA", "key_size": 2048, "reuse_key": False},
                "secret_props": {"contentType": v.content_type},
                "x509_props": {"subject": subject, "validity_months": 12, "key_usage": ["digitalSignature"]},
                "issuer": {"name": "Self"},
                "attributes": {"enabled": True, "created": epoch(v.created), "updated": epoch(v.updated)},
            },
        }

    async def get_certificate(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version") or ""
        _, denied = authorize(request, READ_CERTIFICATE, f"certificates/{name}")
        if denied is not None:
            return denied
        with ctx.world.lock:
            versions = ctx.world.certificates.get(name)
            chosen = None
            if versions:
                chosen = versions[-1] if not version else next((v for v in versions if v.version == version), None)
            if chosen is None:
                return not_found("certificate", name)
            return JSONResponse(certificate_bundle(name, chosen))

    async def list_certificates(request: Request) -> Response:
        _, denied = authorize(request, READ_CERTIFICATE, "certificates")
        if denied is not None:
            return denied
        with ctx.world.lock:
            items = []
            for name, versions in sorted(ctx.world.certificates.items()):
                bundle = certificate_bundle(name, versions[-1])
                items.append(
                    {
                        "id": f"{ctx.base_url}/certificates/{name}",
                        "x5t": bundle["x5t"],
                        "attributes": bundle["attributes"],
                        "tags": bundle["tags"],
                    }
                )
        return JSONResponse(page(request, items, "/certificates"))

    async def control(request: Request) -> Response:
        """Test-only: enable/disable a secret."""
        action = await request.json()
        with ctx.world.lock:
            if "set_enabled" in action:
                spec = action["set_enabled"]
                for v in ctx.world.secrets.get(spec["name"], []):
                    v.enabled = bool(spec["enabled"])
        return JSONResponse({"ok": True, "correlationId": correlation_id()})

    routes = [
        Route("/secrets", list_secrets, methods=["GET"]),
        Route("/secrets/", list_secrets, methods=["GET"]),
        Route("/secrets/{name}/versions", list_versions, methods=["GET"]),
        Route("/secrets/{name}", get_secret, methods=["GET"]),
        Route("/secrets/{name}/", get_secret, methods=["GET"]),
        Route("/secrets/{name}/{version}", get_secret, methods=["GET"]),
        Route("/secrets/{name}", set_secret, methods=["PUT"]),
        Route("/secrets/{name}/", set_secret, methods=["PUT"]),
        Route("/certificates", list_certificates, methods=["GET"]),
        Route("/certificates/", list_certificates, methods=["GET"]),
        Route("/certificates/{name}", get_certificate, methods=["GET"]),
        Route("/certificates/{name}/", get_certificate, methods=["GET"]),
        Route("/certificates/{name}/{version}", get_certificate, methods=["GET"]),
        Route("/_devstack/control", control, methods=["POST"]),
        *stats_routes(ctx.stats),
    ]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))
