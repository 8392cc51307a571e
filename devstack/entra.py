"""Entra ID (HTTPS): OIDC discovery, JWKS, the v2 token endpoint for client credentials, Graph
``/v1.0/applications``; and the App Service managed-identity endpoint (plain HTTP).

Error bodies follow the real shape (``error``, ``error_description`` starting ``AADSTSnnnn:``,
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``). HTTP statuses:
confirmed from public captures unless marked UNCONFIRMED below; every status can be overridden per
code with the scenario's ``entra.error_status`` map.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.common import bearer_token, correlation_id, iso_utc, json_error, stats_routes
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer
from devstack.world import Application, KeyCredential, PasswordCredential, World, new_secret_value

VAULT_RESOURCE = "https://vault.azure.net"
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
ARM_RESOURCE = "https://management.azure.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_CLOCK_SKEW_S = 300  # Entra tolerates a few minutes of client clock skew
GRAPH_READ_ROLES = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"}
GRAPH_WRITE_ALL = "Application.ReadWrite.All"
GRAPH_OWNED_BY = "Application.ReadWrite.OwnedBy"  # read and write the registrations the caller owns
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"  # addKey/removeKey proof of possession
PROOF_MAX_LIFETIME_S = 600

# code -> (default HTTP status, OAuth error). Sources: public issue threads quoting raw bodies.
AADSTS_DEFAULTS: dict[int, tuple[int, str]] = {
    700016: (400, "unauthorized_client"),  # unknown application (as MSAL receives it)
    7000215: (401, "invalid_client"),  # invalid secret: 401 quoted in public threads
    7000222: (401, "invalid_client"),  # expired secret: 401 quoted in public threads
    7000218: (400, "invalid_client"),  # neither client_secret nor client_assertion
    700027: (401, "invalid_client"),  # assertion signature/key: status UNCONFIRMED (configurable)
    700024: (400, "invalid_client"),  # assertion time range: status UNCONFIRMED (configurable)
    500011: (400, "invalid_resource"),  # resource principal not found
    90002: (400, "invalid_request"),  # tenant not found: OAuth error name UNCONFIRMED
    65001: (400, "invalid_grant"),  # consent missing (suberror consent_required)
    1002012: (400, "invalid_scope"),  # client credentials without /.default
    70003: (400, "unsupported_grant_type"),
}


@dataclass
class EntraContext:
    world: World
    issuer: TokenIssuer
    stats: Stats
    base_url: str
    dataverse_resources: list[str]

    fail_token_requests: int = 0  # fault: answer the next N token requests with 503
    retry_after_s: int = 5
    fail_graph_writes: int = 0  # fault: answer the next N Graph credential writes with graph_write_status
    graph_write_status: int = 503
    graph_write_retry_after_s: int = 1

    def now(self) -> float:
        return time.time() + self.world.clock_offset_s

    def known_resources(self) -> set[str]:
        extra = {r.rstrip("/") for r in self.world.extra_resources}
        dataverse = {r.rstrip("/") for r in self.dataverse_resources}
        return {VAULT_RESOURCE, ARM_RESOURCE, *self.graph_resources(), *extra, *dataverse}

    def graph_resources(self) -> set[str]:
        # GRAPH_URL points at this server locally; its own URL is then the Graph resource too.
        return {GRAPH_RESOURCE, self.base_url}


def aadsts_error(ctx: EntraContext, code: int, description: str, **extra: Any) -> JSONResponse:
    status, error = AADSTS_DEFAULTS.get(code, (400, "invalid_request"))
    status = ctx.world.error_status.get(str(code), status)
    now = datetime.now(UTC)
    timestamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    trace, corr = correlation_id(), correlation_id()
    body: dict[str, Any] = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"{ctx.base_url}/error?code={code}",
        **extra,
    }
    return JSONResponse(body, status_code=status)


def entra_app(ctx: EntraContext) -> Starlette:
    """The Entra + Graph server."""

    async def openid_configuration(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not _tenant_matches(ctx, tenant):
            return aadsts_error(ctx, 90002, _tenant_not_found(tenant))
        base = f"{ctx.base_url}/{tenant}"
        return JSONResponse(
            {
                "issuer": ctx.issuer.issuer,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def jwks(request: Request) -> Response:
        return JSONResponse(ctx.issuer.jwks())

    async def token(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if ctx.fail_token_requests > 0:
            ctx.fail_token_requests -= 1
            return JSONResponse(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "AADSTS90033: A transient error has occurred.",
                },
                status_code=503,
                headers={"Retry-After": str(ctx.retry_after_s)},
            )
        fields = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if not _tenant_matches(ctx, tenant):
            return aadsts_error(ctx, 90002, _tenant_not_found(tenant))
        if fields.get("grant_type") != "client_credentials":
            return aadsts_error(
                ctx, 70003, f"The app requested an unsupported grant type '{fields.get('grant_type', '')}'."
            )
        client_id = fields.get("client_id", "")
        app = ctx.world.application(client_id)
        if app is None:
            return aadsts_error(
                ctx,
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{ctx.world.tenant_name}'."
                " This can happen if the application has not been installed by the administrator of the tenant"
                " or consented to by any user in the tenant. You may have sent your authentication request to the"
                " wrong tenant.",
            )
        scope = fields.get("scope", "").split()
        resource_scope = next((s for s in scope if s.endswith("/.default")), None)
        if resource_scope is None:
            return aadsts_error(
                ctx,
                1002012,
                f"The provided value for scope {' '.join(scope)} is not valid. Client credential flows must have"
                " a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        failure = _authenticate_client(ctx, app, fields, tenant, request)
        if failure is not None:
            return failure
        resource = resource_scope[: -len("/.default")].rstrip("/")
        if resource not in ctx.known_resources():
            return aadsts_error(
                ctx,
                500011,
                f"The resource principal named {resource} was not found in the tenant named {ctx.world.tenant_name}."
                " This can happen if the application has not been installed by the administrator of the tenant or"
                " consented to by any user in the tenant. You might have sent your authentication request to the"
                " wrong tenant.",
            )
        if app.consent_missing:
            return aadsts_error(
                ctx,
                65001,
                f"The user or administrator has not consented to use the application with ID '{app.app_id}' named"
                f" '{app.display_name}'. Send an interactive authorization request for this user and resource.",
                suberror="consent_required",
            )
        lifetime = ctx.world.token_lifetime_s
        access_token, _ = ctx.issuer.issue(
            audience=resource,
            app_id=app.app_id,
            object_id=app.object_id,
            roles=app.app_roles.get(resource, []),
            lifetime_s=lifetime,
        )
        ctx.stats.record_token(app.app_id, resource)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }
        if ctx.world.refresh_in_s:
            body["refresh_in"] = ctx.world.refresh_in_s
        return JSONResponse(body)

    async def graph_list(request: Request) -> Response:
        denied = _graph_authorize(ctx, request)
        if denied is not None:
            return denied
        apps = list(ctx.world.applications.values())
        flt = request.query_params.get("$filter")
        if flt:
            matched = _graph_filter(apps, flt)
            if matched is None:
                return json_error(
                    400,
                    _graph_error("Request_UnsupportedQuery", f"Unsupported or invalid query filter clause: {flt}"),
                )
            apps = matched
        select = _graph_select(request)
        return JSONResponse(
            {
                "@odata.context": f"{GRAPH_RESOURCE}/v1.0/$metadata#applications",
                "value": [_graph_application(a, select) for a in apps],
            }
        )

    def find_app(request: Request) -> tuple[Application | None, Response | None]:
        params = request.path_params
        app = (
            ctx.world.application(params["app_id"])
            if "app_id" in params
            else next((a for a in ctx.world.applications.values() if a.object_id == params["object_id"]), None)
        )
        if app is None:
            ref = params.get("app_id") or params.get("object_id")
            return None, json_error(
                404,
                _graph_error(
                    "Request_ResourceNotFound",
                    f"Resource '{ref}' does not exist or one of its queried reference-property objects are not"
                    " present.",
                ),
            )
        return app, None

    def authorized_app(request: Request, *, write: bool) -> tuple[Application | None, Response]:
        """The application the path names, or the answer that refuses the request: the caller's permission
        first (as Graph checks it before it looks the object up), then the object's absence."""
        app, missing = find_app(request)
        denied = _graph_authorize(ctx, request, app, write=write)
        if denied is not None:
            return None, denied
        if app is None:
            return None, missing or Response(status_code=404)
        return app, Response(status_code=200)

    async def graph_get(request: Request) -> Response:
        app, refused = authorized_app(request, write=False)
        if app is None:
            return refused
        body = _graph_application(app, _graph_select(request))
        body["@odata.context"] = f"{GRAPH_RESOURCE}/v1.0/$metadata#applications/$entity"
        return JSONResponse(body)

    async def graph_owners(request: Request) -> Response:
        app, refused = authorized_app(request, write=False)
        if app is None:
            return refused
        select = _graph_select(request)
        owners = []
        for object_id in app.owners:
            identity = ctx.world.identity_by_object_id(object_id)
            owner = {"@odata.type": "#microsoft.graph.servicePrincipal", "id": object_id,
                     "appId": identity.client_id if identity else None,
                     "displayName": identity.name if identity else None,
                     "servicePrincipalType": "ManagedIdentity"}  # fmt: skip
            owners.append(
                {k: v for k, v in owner.items() if select is None or k in select or k in ("id", "@odata.type")}
            )
        return JSONResponse({"@odata.context": f"{GRAPH_RESOURCE}/v1.0/$metadata#directoryObjects", "value": owners})

    async def graph_write(request: Request) -> Response:
        """addPassword, removePassword, addKey, removeKey on one application."""
        app, refused = authorized_app(request, write=True)
        if app is None:
            return refused
        action = request.path_params["action"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return json_error(400, _graph_error("BadRequest", "The request body must be a JSON object."))
        with ctx.world.lock:
            if ctx.fail_graph_writes > 0:
                ctx.fail_graph_writes -= 1
                return json_error(
                    ctx.graph_write_status,
                    _graph_error("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
                    headers={"Retry-After": str(ctx.graph_write_retry_after_s)},
                )
            return _credential_write(ctx, app, action, body)

    async def application_view(request: Request) -> Response:
        """Test view of an app registration's credentials: values only as SHA-256, never in the clear."""
        app = ctx.world.applications.get(request.path_params["name"])
        if app is None:
            return json_error(404, {"error": "no such application"})
        with ctx.world.lock:
            return JSONResponse({
                "passwords": [
                    {"key_id": p.key_id, "display_name": p.display_name, "start": iso_utc(p.start),
                     "end": iso_utc(p.end), "hint": p.hint,
                     "accepted_after": iso_utc(p.accepted_after) if p.accepted_after else None,
                     "value_sha256": hashlib.sha256(p.value.encode()).hexdigest()}
                    for p in app.passwords
                ],
                "keys": [
                    {"key_id": k.key_id, "thumbprint": k.sha1.hex().upper(), "start": iso_utc(k.start),
                     "end": iso_utc(k.end), "has_private_key": k.private_key is not None,
                     "accepted_after": iso_utc(k.accepted_after) if k.accepted_after else None}
                    for k in app.keys if k.registered
                ],
                "owners": list(app.owners),
            })  # fmt: skip

    async def control(request: Request) -> Response:
        """Test-only faults and changes: clock offset, add or remove an app password, Graph write failures,
        the propagation delay of new credentials."""
        action = await request.json()
        with ctx.world.lock:
            if "fail_token_requests" in action:
                ctx.fail_token_requests = int(action["fail_token_requests"])
            if "fail_graph_writes" in action:
                spec = action["fail_graph_writes"] or {}
                ctx.fail_graph_writes = int(spec.get("count", 0))
                ctx.graph_write_status = int(spec.get("status", 503))
                ctx.graph_write_retry_after_s = int(spec.get("retry_after_s", 1))
            if "credential_propagation_s" in action:
                ctx.world.credential_propagation_s = float(action["credential_propagation_s"])
            if "clock_offset_s" in action:
                ctx.world.clock_offset_s = float(action["clock_offset_s"])
            if "add_password" in action:
                spec = action["add_password"]
                app = ctx.world.applications[spec["app"]]
                password = PasswordCredential(
                    key_id=str(uuid.uuid4()),
                    display_name=spec.get("display_name", "rotated"),
                    value=spec.get("value") or new_secret_value(),
                    start=datetime.now(UTC),
                    end=datetime.fromtimestamp(time.time() + float(spec.get("lifetime_s", 86400 * 180)), UTC),
                )
                app.passwords.append(password)
                ctx.issuer.record(password.value)
                return JSONResponse({"key_id": password.key_id, "value": password.value})
            if "remove_password" in action:
                spec = action["remove_password"]
                app = ctx.world.applications[spec["app"]]
                app.passwords = [p for p in app.passwords if p.display_name != spec["display_name"]]
        return JSONResponse({"ok": True})

    routes = [
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
        Route("/{tenant}/discovery/v2.0/keys", jwks, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/v1.0/applications", graph_list, methods=["GET"]),
        Route("/v1.0/applications(appId='{app_id}')", graph_get, methods=["GET"]),
        Route("/v1.0/applications/{object_id}", graph_get, methods=["GET"]),
        Route("/v1.0/applications(appId='{app_id}')/owners", graph_owners, methods=["GET"]),
        Route("/v1.0/applications/{object_id}/owners", graph_owners, methods=["GET"]),
        Route("/v1.0/applications(appId='{app_id}')/{action:str}", graph_write, methods=["POST"]),
        Route("/v1.0/applications/{object_id}/{action:str}", graph_write, methods=["POST"]),
        Route("/_devstack/applications/{name}", application_view, methods=["GET"]),
        Route("/_devstack/control", control, methods=["POST"]),
        *stats_routes(ctx.stats),
    ]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))


def _tenant_matches(ctx: EntraContext, tenant: str) -> bool:
    return tenant.lower() in {ctx.world.tenant_id.lower(), ctx.world.tenant_name.lower()}


def _tenant_not_found(tenant: str) -> str:
    return (
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the"
        " correct cloud. Check with your subscription administrator, this may happen if there are no active"
        " subscriptions for the tenant."
    )


def _authenticate_client(
    ctx: EntraContext, app: Application, fields: dict[str, str], tenant: str, request: Request
) -> Response | None:
    now = ctx.now()
    if "client_secret" in fields:
        offered = fields["client_secret"].encode()
        match = next((p for p in app.passwords if hmac.compare_digest(p.value.encode(), offered)), None)
        if match is not None and match.accepted_after is not None and now < match.accepted_after.timestamp():
            match = None  # added moments ago: Entra refuses it as if it were wrong, until it has propagated
        if match is None:
            return aadsts_error(
                ctx,
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret"
                f" value, not the client secret ID, for a secret added to app '{app.app_id}'.",
            )
        if match.end.timestamp() <= now:
            return aadsts_error(
                ctx,
                7000222,
                f"The provided client secret keys for app '{app.app_id}' are expired. Visit the Azure portal to"
                " create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate"
                " credentials for added security: https://aka.ms/certCreds.",
            )
        return None
    if fields.get("client_assertion_type") == ASSERTION_TYPE and fields.get("client_assertion"):
        token_endpoint = f"{ctx.base_url}/{tenant}/oauth2/v2.0/token"
        return _verify_assertion(ctx, app, fields["client_assertion"], token_endpoint, now)
    return aadsts_error(
        ctx,
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )


def _unpadded(value: str) -> str:
    return value.rstrip("=")


def _verify_assertion(
    ctx: EntraContext, app: Application, assertion: str, token_endpoint: str, now: float
) -> Response | None:
    import base64

    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        return aadsts_error(ctx, 700027, "Client assertion failed signature validation. [Reason - malformed JWT.]")
    key: KeyCredential | None = None
    thumb = ""
    for candidate in app.keys:
        if not candidate.registered:
            continue
        if candidate.accepted_after is not None and now < candidate.accepted_after.timestamp():
            continue  # uploaded moments ago: not yet known everywhere
        x5t = _unpadded(base64.urlsafe_b64encode(candidate.sha1).decode())
        x5t256 = _unpadded(base64.urlsafe_b64encode(candidate.sha256).decode())
        if _unpadded(str(header.get("x5t", ""))) == x5t or _unpadded(str(header.get("x5t#S256", ""))) == x5t256:
            key = candidate
            break
    if key is None:
        raw = header.get("x5t") or header.get("x5t#S256") or ""
        try:
            thumb = base64.urlsafe_b64decode(_unpadded(str(raw)) + "==").hex().upper()
        except ValueError:
            thumb = str(raw)
        return aadsts_error(
            ctx,
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used"
            f" by client: '{thumb}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see"
            f" configured keys for app Id '{app.app_id}'.]",
        )
    public_key = key.certificate.public_key()
    assert isinstance(public_key, RSAPublicKey)
    try:
        claims = jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256", "PS256"],
            # MSAL sends no nbf; times are checked below against the (possibly skewed) server clock.
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
        )
    except jwt.InvalidTokenError as exc:
        return aadsts_error(
            ctx,
            700027,
            f"Client assertion failed signature validation. [Reason - {exc}, Thumbprint of key used by client:"
            f" '{key.sha1.hex().upper()}']",
        )
    if key.end.timestamp() <= now:
        return aadsts_error(
            ctx,
            700027,
            f"The certificate with identifier used to sign the client assertion is expired on application"
            f" '{app.app_id}'. [Reason - The key used is expired., Thumbprint of key used by client:"
            f" '{key.sha1.hex().upper()}', Found key 'Start={iso_utc(key.start)}, End={iso_utc(key.end)}']",
        )
    # Audience mismatch: Entra's exact code for it is UNCONFIRMED; reported as a signature failure.
    if claims.get("aud") != token_endpoint or claims.get("iss") != app.app_id or claims.get("sub") != app.app_id:
        return aadsts_error(
            ctx,
            700027,
            "Client assertion failed signature validation. [Reason - the aud, iss or sub claim does not match"
            " the token endpoint and client id.]",
        )
    exp, iat = float(claims.get("exp", 0)), float(claims.get("iat", claims.get("nbf", 0)))
    if exp <= now or iat > now + ASSERTION_CLOCK_SKEW_S:
        current = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        valid_from = datetime.fromtimestamp(iat, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        expiry = datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        return aadsts_error(
            ctx,
            700024,
            f"Client assertion is not within its valid time range. Current time: {current}, assertion valid from"
            f" {valid_from}, expiry time of assertion {expiry}. Review the documentation at"
            " https://learn.microsoft.com/entra/identity-platform/certificate-credentials.",
        )
    return None


def _graph_error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": correlation_id(),
                "client-request-id": correlation_id(),
            },
        }
    }


def _graph_authorize(
    ctx: EntraContext, request: Request, app: Application | None = None, *, write: bool = False
) -> Response | None:
    """The caller's Graph app roles against the operation: ReadWrite.All anywhere, ReadWrite.OwnedBy on the
    registrations it owns (the token's oid among the owners), the read roles for reads."""
    token = bearer_token(request)
    if token is None:
        return json_error(401, _graph_error("InvalidAuthenticationToken", "Access token is empty."))
    try:
        claims = _verify_any(ctx, token, [*sorted(ctx.graph_resources()), GRAPH_APP_ID])
    except jwt.ExpiredSignatureError:
        return json_error(
            401,
            _graph_error("InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."),
        )
    except jwt.InvalidTokenError:
        return json_error(
            401,
            _graph_error("InvalidAuthenticationToken", "Access token validation failure. Invalid audience."),
        )
    roles = set(claims.get("roles", []))
    owns = app is not None and str(claims.get("oid", "")) in app.owners
    if write:
        allowed = GRAPH_WRITE_ALL in roles or (GRAPH_OWNED_BY in roles and owns)
    else:
        allowed = bool(GRAPH_READ_ROLES & roles) or (GRAPH_OWNED_BY in roles and (owns or app is None))
    if not allowed:
        return json_error(
            403,
            _graph_error("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
        )
    return None


def _credential_write(ctx: EntraContext, app: Application, action: str, body: dict[str, Any]) -> Response:
    now = ctx.now()
    accepted_after = datetime.fromtimestamp(now + ctx.world.credential_propagation_s, UTC)
    if action == "addPassword":
        spec = body.get("passwordCredential") or {}
        end_text = spec.get("endDateTime")
        try:
            end = graph_datetime(end_text) if end_text else datetime.fromtimestamp(now + 2 * 365 * 86400, UTC)
        except ValueError:
            return json_error(400, _graph_error("Request_BadRequest", f"Invalid endDateTime: {str(end_text)[:40]}"))
        password = PasswordCredential(
            key_id=str(uuid.uuid4()), display_name=str(spec.get("displayName") or ""), value=new_secret_value(),
            start=datetime.fromtimestamp(now, UTC), end=end, accepted_after=accepted_after,
        )  # fmt: skip
        app.passwords.append(password)
        ctx.issuer.record(password.value)
        return JSONResponse({
            "@odata.context": f"{GRAPH_RESOURCE}/v1.0/$metadata#microsoft.graph.passwordCredential",
            "customKeyIdentifier": None, "displayName": password.display_name, "endDateTime": iso_utc(password.end),
            "hint": password.hint, "keyId": password.key_id, "secretText": password.value,
            "startDateTime": iso_utc(password.start),
        })  # fmt: skip
    if action == "removePassword":
        key_id = str(body.get("keyId") or "")
        if not any(p.key_id == key_id for p in app.passwords):
            # Graph's answer for an unknown keyId is UNCONFIRMED: a 404 in its error envelope.
            return json_error(
                404, _graph_error("Request_ResourceNotFound", f"No password credential with keyId {key_id}.")
            )
        app.passwords = [p for p in app.passwords if p.key_id != key_id]
        return Response(status_code=204)
    if action in ("addKey", "removeKey"):
        refused = _verify_proof(ctx, app, str(body.get("proof") or ""), now)
        if refused is not None:
            return refused
        if action == "removeKey":
            key_id = str(body.get("keyId") or "")
            if not any(k.key_id == key_id and k.registered for k in app.keys):
                return json_error(
                    404, _graph_error("Request_ResourceNotFound", f"No key credential with keyId {key_id}.")
                )
            app.keys = [k for k in app.keys if k.key_id != key_id]
            return Response(status_code=204)
        return _add_key(app, body.get("keyCredential") or {}, accepted_after)
    return json_error(400, _graph_error("BadRequest", f"Unsupported action '{action[:40]}' on applications."))


def graph_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _add_key(app: Application, spec: dict[str, Any], accepted_after: datetime) -> Response:
    import base64

    from cryptography import x509

    if spec.get("type") != "AsymmetricX509Cert" or spec.get("usage") != "Verify":
        return json_error(
            400, _graph_error("Request_BadRequest", "keyCredential must be type AsymmetricX509Cert, usage Verify.")
        )
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(str(spec.get("key") or "")))
    except ValueError:
        return json_error(400, _graph_error("Request_BadRequest", "keyCredential.key is not a base64 DER certificate."))
    key = KeyCredential(
        key_id=str(uuid.uuid4()), display_name=str(spec.get("displayName") or "uploaded"), private_key=None,
        certificate=certificate, accepted_after=accepted_after,
    )  # fmt: skip
    app.keys.append(key)
    return JSONResponse({
        "@odata.context": f"{GRAPH_RESOURCE}/v1.0/$metadata#microsoft.graph.keyCredential",
        "customKeyIdentifier": base64.b64encode(key.sha1).decode(), "displayName": key.display_name,
        "endDateTime": iso_utc(key.end), "key": None, "keyId": key.key_id, "startDateTime": iso_utc(key.start),
        "type": "AsymmetricX509Cert", "usage": "Verify",
    })  # fmt: skip


def _verify_proof(ctx: EntraContext, app: Application, proof: str, now: float) -> Response | None:
    """addKey/removeKey's proof of possession: a JWT signed with one of the app's valid certificates, aud Azure
    AD Graph's app id, iss the application's object id, at most ten minutes long. Graph's code and message
    for a bad proof are UNCONFIRMED (a 400 in its envelope)."""
    import base64

    def bad(reason: str) -> Response:
        return json_error(400, _graph_error("Request_BadRequest", f"Proof of possession validation failed: {reason}"))

    try:
        header = jwt.get_unverified_header(proof)
    except jwt.InvalidTokenError:
        return bad("the proof is not a JWT")
    x5t = _unpadded(str(header.get("x5t", "")))
    signer = next((k for k in app.keys if k.registered and _unpadded(base64.urlsafe_b64encode(k.sha1).decode()) == x5t
                   and k.end.timestamp() > now), None)  # fmt: skip
    if signer is None:
        return bad("it is not signed by a valid certificate of the application")
    public_key = signer.certificate.public_key()
    if not isinstance(public_key, RSAPublicKey):
        return bad("the signing certificate is not RSA")
    try:
        claims = jwt.decode(proof, public_key, algorithms=["RS256"], audience=PROOF_AUDIENCE,
                            options={"verify_exp": False, "verify_nbf": False})  # fmt: skip
    except jwt.InvalidTokenError as exc:
        return bad(str(exc))
    if claims.get("iss") != app.object_id:
        return bad("iss is not the application's object id")
    nbf, exp = float(claims.get("nbf", 0)), float(claims.get("exp", 0))
    if not (nbf - ASSERTION_CLOCK_SKEW_S <= now < exp) or exp - nbf > PROOF_MAX_LIFETIME_S:
        return bad("outside its validity (at most ten minutes)")
    return None


def _verify_any(ctx: EntraContext, token: str, audiences: list[str]) -> dict[str, Any]:
    last: jwt.InvalidTokenError = jwt.InvalidAudienceError("no audience")
    for audience in audiences:
        try:
            return ctx.issuer.verify(token, audience)
        except jwt.InvalidAudienceError as exc:
            last = exc
    raise last


def _graph_filter(apps: list[Application], flt: str) -> list[Application] | None:
    field, _, rest = flt.strip().partition(" eq ")
    value = rest.strip()
    if not (value.startswith("'") and value.endswith("'")):
        return None
    value = value[1:-1].replace("''", "'")
    if field.strip() == "appId":
        return [a for a in apps if a.app_id == value]
    if field.strip() == "displayName":
        return [a for a in apps if a.display_name == value]
    return None


def _graph_select(request: Request) -> set[str] | None:
    raw = request.query_params.get("$select")
    return {s.strip() for s in raw.split(",") if s.strip()} if raw else None


def _graph_application(app: Application, select: set[str] | None) -> dict[str, Any]:
    import base64

    full: dict[str, Any] = {
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "passwordCredentials": [
            {
                "customKeyIdentifier": None,
                "displayName": p.display_name,
                "endDateTime": iso_utc(p.end),
                "hint": p.hint,
                "keyId": p.key_id,
                "secretText": None,
                "startDateTime": iso_utc(p.start),
            }
            for p in app.passwords
        ],
        "keyCredentials": [
            {
                # Edm.Binary serialises as base64; for uploaded certificates it holds the SHA-1 thumbprint.
                "customKeyIdentifier": base64.b64encode(k.sha1).decode(),
                "displayName": f"CN={app.name}-{k.display_name}",
                "endDateTime": iso_utc(k.end),
                "key": None,
                "keyId": k.key_id,
                "startDateTime": iso_utc(k.start),
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
            }
            for k in app.keys
            if k.registered
        ],
    }
    if select is None:
        return full
    return {k: v for k, v in full.items() if k in select or k == "id"}


def managed_identity_app(ctx: EntraContext, identity_header: str) -> Starlette:
    """The App Service managed-identity endpoint (``IDENTITY_ENDPOINT``), plain HTTP as on the platform."""

    async def msi_token(request: Request) -> Response:
        supplied = request.headers.get("x-identity-header", "")
        if not hmac.compare_digest(supplied.encode(), identity_header.encode()):
            return json_error(
                401,
                {"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER is missing or wrong."},
            )
        params = request.query_params
        if not params.get("api-version"):
            return json_error(
                400,
                {"statusCode": 400, "message": "api-version is required.", "correlationId": correlation_id()},
            )
        resource = (params.get("resource") or "").rstrip("/")
        if resource.endswith("/.default"):
            resource = resource[: -len("/.default")]
        client_id = params.get("client_id")
        object_id = params.get("object_id")
        identity = ctx.world.identity_by_object_id(object_id) if object_id else ctx.world.identity(client_id or None)
        if identity is None:
            return json_error(
                400,
                {
                    "statusCode": 400,
                    "message": "Unable to load the proper Managed Identity.",
                    "correlationId": correlation_id(),
                },
            )
        if resource not in ctx.known_resources():
            # The proxy relays Entra's refusal; the exact envelope is UNCONFIRMED.
            return json_error(
                400,
                {
                    "statusCode": 400,
                    "message": f"AADSTS500011: The resource principal named {resource} was not found in the tenant"
                    f" named {ctx.world.tenant_name}.",
                    "correlationId": correlation_id(),
                },
            )
        roles = identity.graph_app_roles if resource in ctx.graph_resources() else []
        lifetime = ctx.world.mi_token_lifetime_s
        access_token, expires_at = ctx.issuer.issue(
            audience=resource,
            app_id=identity.client_id,
            object_id=identity.object_id,
            roles=roles,
            lifetime_s=lifetime,
        )
        ctx.stats.record_token(identity.client_id, resource)
        return JSONResponse(
            {
                "access_token": access_token,
                "expires_on": str(expires_at),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            }
        )

    routes = [Route("/msi/token", msi_token, methods=["GET"]), *stats_routes(ctx.stats)]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))
