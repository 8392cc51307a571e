"""Azure Resource Manager (HTTPS, ``ARM_URL``), read-only: the caller's effective permissions on the vault.

``GET {ARM_URL}{scope}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01`` ("Permissions -
List For Resource", and "List For Resource Group" at a resource group) answers
``{"value": [{"actions", "notActions", "dataActions", "notDataActions"}, ...]}``: one entry per role assignment
of the caller that covers the scope (its role definition's permissions, wildcards as Azure writes them). The
scope is the vault (``KEY_VAULT_RESOURCE_ID``), one of its objects (``…/vaults/<name>/secrets/<secret>``), its
resource group or its subscription; assignments are the identity's vault-wide ``key_vault_roles`` (covering the
vault and everything in it) and its scoped ones (covering that object only). Nothing is ever written.

The bearer token must be one devstack issued for ``https://management.azure.com`` (the managed-identity
endpoint issues it); otherwise 401 with ARM's ``{"error": {"code", "message"}}`` envelope.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.common import bearer_token, stats_routes
from devstack.keyvault import RESOURCE_GROUP, ROLE_DEFINITIONS, SUBSCRIPTION_ID, covering_roles
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer
from devstack.world import World

ARM_RESOURCE = "https://management.azure.com"
ARM_AUDIENCES = (ARM_RESOURCE, "https://management.core.windows.net")
PERMISSIONS_PATH = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)"
    r"(?:/resourcegroups/(?P<group>[^/]+)"
    r"(?:/providers/microsoft\.keyvault/vaults/(?P<vault>[^/]+)"
    r"(?:/(?P<kind>secrets|certificates|keys)/(?P<object>[^/]+))?)?)?"
    r"/providers/microsoft\.authorization/permissions/?$",
    re.IGNORECASE,
)


@dataclass
class ArmContext:
    world: World
    issuer: TokenIssuer
    stats: Stats
    authority_host: str


def _arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def arm_app(ctx: ArmContext) -> Starlette:
    def unauthenticated(code: str, message: str) -> Response:
        # UNCONFIRMED: the exact WWW-Authenticate parameters ARM sends with a 401.
        challenge = (
            f'Bearer authorization_uri="{ctx.authority_host}/{ctx.world.tenant_id}", error="invalid_token",'
            f' error_description="{message}"'
        )
        return _arm_error(401, code, message, {"WWW-Authenticate": challenge})

    def caller(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        header = request.headers.get("authorization")
        if header is None:
            return None, unauthenticated(
                "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        token = bearer_token(request)
        if token is None:
            return None, unauthenticated(
                "AuthenticationFailedInvalidHeader",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            )
        audience_error: jwt.InvalidAudienceError | None = None
        for audience in ARM_AUDIENCES:
            try:
                return ctx.issuer.verify(token, audience), None
            except jwt.InvalidAudienceError as exc:
                audience_error = exc
            except jwt.ExpiredSignatureError:
                expired = jwt.decode(token, options={"verify_signature": False}).get("exp", 0)
                return None, unauthenticated(
                    "ExpiredAuthenticationToken",
                    f"The access token expiry UTC time '{_arm_time(float(expired))}' is earlier than current UTC"
                    f" time '{_arm_time(datetime.now(UTC).timestamp())}'.",
                )
            except jwt.InvalidTokenError:
                return None, unauthenticated("InvalidAuthenticationToken", "The access token is invalid.")
        assert audience_error is not None
        token_audience = jwt.decode(token, options={"verify_signature": False}).get("aud")
        allowed = ",".join(f"'{a}/','{a}'" for a in reversed(ARM_AUDIENCES))
        return None, unauthenticated(
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for wrong audience or resource '{token_audience}'. It should exactly"
            f" match with one of the allowed audiences {allowed}.",
        )

    async def permissions(request: Request) -> Response:
        claims, failed = caller(request)
        if failed is not None:
            return failed
        assert claims is not None
        if not request.query_params.get("api-version"):
            return _arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        path = re.sub("/+", "/", request.url.path)
        match = PERMISSIONS_PATH.match(path)
        if match is None:
            return _arm_error(404, "ResourceNotFound", f"devstack's ARM serves only the Key Vault permissions: {path}")
        found = _resolve(ctx, match)
        if isinstance(found, Response):
            return found
        with ctx.world.lock:
            identity = ctx.world.identity_by_object_id(str(claims.get("oid", "")))
            entries = []
            if found is not None:
                for role, _ in covering_roles(identity, found):
                    definition = ROLE_DEFINITIONS.get(role)
                    if definition is not None:
                        entries.append(definition.permission())
        request_id = str(uuid.uuid4())
        return JSONResponse(
            {"value": entries},
            headers={"x-ms-request-id": request_id, "x-ms-correlation-request-id": request_id},
        )

    routes = [*stats_routes(ctx.stats), Route("/{path:path}", permissions, methods=["GET"])]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))


def _resolve(ctx: ArmContext, match: re.Match[str]) -> str | Response | None:
    """The scope relative to the vault (``""``, ``secrets/<name>``), None above the vault, or a 404."""
    subscription, group, vault = match["subscription"], match["group"], match["vault"]
    if subscription.lower() != SUBSCRIPTION_ID:
        return _arm_error(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
    if group is None:
        return None
    if group.lower() != RESOURCE_GROUP.lower():
        return _arm_error(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
    if vault is None:
        return None
    if vault.lower() != ctx.world.vault_name.lower():
        # UNCONFIRMED: that the permissions call answers 404 for a vault that does not exist.
        return _arm_error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.KeyVault/vaults/{vault}' under resource group '{group}' was not found. For"
            " more details please go to https://aka.ms/ARMResourceNotFoundFix",
        )
    if match["kind"] is None:
        return ""
    return f"{match['kind'].lower()}/{match['object']}"


def _arm_time(epoch_s: float) -> str:
    """ARM writes times in its messages as .NET's invariant culture does: ``6/15/2026 8:22:51 AM``."""
    when = datetime.fromtimestamp(epoch_s, UTC)
    hour = when.hour % 12 or 12
    return f"{when.month}/{when.day}/{when.year} {hour}:{when.minute:02d}:{when.second:02d} {when.strftime('%p')}"
