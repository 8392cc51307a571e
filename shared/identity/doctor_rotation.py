"""The doctor's rotation-readiness step: whether the managed identity holds what credential rotation needs,
found without changing anything.

- Graph: the app role Application.ReadWrite.OwnedBy in the identity's Graph token (ReadWrite.All works too, and
  reaches every registration in the tenant: a warning), and the identity among the owners of the Dataverse app
  registration (what OwnedBy reaches).
- Key Vault, asked of Azure Resource Manager ("Permissions - List For Resource", read-only): for a client secret,
  the data actions that store a new version and disable the old one on that secret (Secrets Officer scoped to
  it is the least; vault-wide is broader: a warning); for a certificate, reading its versions (Certificate User
  on it) and its backing secret's, and in Entra a currently valid registration of the certificate in use, which
  signs the proof addKey requires.

Every missing piece is reported, each with its catalogue entry, as a warning: the chain to Dataverse works
without them (a first deployment grants the scoped roles only once the secret exists). An unset
``KEY_VAULT_RESOURCE_ID`` or a service that does not answer leaves a piece unchecked, also a warning.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared.errors import AuthError, ConfigError, DownstreamError
from shared.identity.diagnosis import diagnose
from shared.identity.doctor_report import StepResult
from shared.outgoing_http import PROBE, HttpCaller
from shared.settings_registry import EnvVars

if TYPE_CHECKING:
    import requests

    from shared.config import Settings
    from shared.graph import GraphReader

STEP = "rotation readiness"
# ARM's audience, as VAULT_SCOPE is Key Vault's: the public cloud's resource id, whatever host ARM_URL names.
ARM_SCOPE = "https://management.azure.com/.default"
PERMISSIONS_API_VERSION = "2022-04-01"
MAX_PAGES = 20  # one entry per role assignment: a few pages at most
# The doctor reports what it finds now: one attempt, as its Dataverse probes, under ARM's own name.
ARM_PROBE = replace(PROBE, name="Azure Resource Manager")

OWNED_BY = "Application.ReadWrite.OwnedBy"
READ_WRITE_ALL = "Application.ReadWrite.All"
SET_ACTION = "Microsoft.KeyVault/vaults/secrets/setSecret/action"  # a new version
UPDATE_ACTION = "Microsoft.KeyVault/vaults/secrets/update/action"  # its attributes: disable the old version
GET_ACTION = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
READ_METADATA_ACTION = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"  # list the versions
READ_CERTIFICATE_ACTION = "Microsoft.KeyVault/vaults/certificates/read"
_VAULT_ID = re.compile(
    r"/subscriptions/[0-9A-Za-z-]+/resourceGroups/[-\w.()]+/providers/Microsoft\.KeyVault/vaults/[0-9A-Za-z-]+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RotationCheckSettings:
    """What the step reads besides the app's Settings: ROTATION_ENABLED, ARM_URL and KEY_VAULT_RESOURCE_ID."""

    enabled: bool
    arm_url: str
    key_vault_resource_id: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RotationCheckSettings:
        from shared.config import SettingsReader

        reader = SettingsReader(env)
        checked = cls(
            enabled=reader.boolean(EnvVars.ROTATION_ENABLED),
            arm_url=reader.https_url(EnvVars.ARM_URL),
            key_vault_resource_id=reader.optional(EnvVars.KEY_VAULT_RESOURCE_ID),
        )
        reader.raise_problems()
        return checked


def action_matches(pattern: str, action: str) -> bool:
    """Azure RBAC's matching of an action against a role's pattern: case-insensitive, each ``*`` standing for
    any run of characters, ``/`` included (``Microsoft.KeyVault/vaults/*`` covers every data action in a vault)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, action, re.IGNORECASE) is not None


def permitted(entries: Iterable[Mapping[str, Any]], action: str) -> bool:
    """Whether the permissions ARM listed allow the data action ``action``. ``notDataActions`` takes away from its
    own entry only (one role assignment), never from another: it is not a deny."""
    return any(
        any(action_matches(p, action) for p in entry.get("dataActions") or [])
        and not any(action_matches(p, action) for p in entry.get("notDataActions") or [])
        for entry in entries
    )


class ArmPermissions:
    """ARM's "Permissions - List For Resource": the caller's own permissions on a resource, read-only."""

    def __init__(
        self, arm_url: str, credential: Any, *, timeout_s: float, session: requests.Session | None = None
    ) -> None:
        self.arm_url = arm_url.rstrip("/")
        self._credential = credential
        self._caller = HttpCaller(session, ARM_PROBE.with_timeout(timeout_s))

    def list_for(self, resource_id: str) -> list[dict[str, Any]]:
        """Every permission entry (one per covering role assignment) on ``resource_id``. Raises AuthError."""
        path = "/".join(quote(segment, safe="") for segment in resource_id.split("/"))
        url: str | None = f"{self.arm_url}{path}/providers/Microsoft.Authorization/permissions"
        params: dict[str, str] | None = {"api-version": PERMISSIONS_API_VERSION}
        entries: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            body = self._get(url, params, resource_id)
            entries += [dict(e) for e in body.get("value") or [] if isinstance(e, Mapping)]
            next_link = body.get("nextLink")
            url, params = (str(next_link), None) if next_link else (None, None)
        return entries

    def _get(self, url: str, params: dict[str, str] | None, resource_id: str) -> dict[str, Any]:
        token = self._credential.get_token(ARM_SCOPE).token
        try:
            response = self._caller.send(
                "GET", url, params=params, headers={"Authorization": f"Bearer {token}"}, raise_for_status=False
            )
        except DownstreamError as exc:
            raise _arm_error(str(exc), resource_id, retryable=exc.retryable) from None
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error.get("message") or "")
            except (ValueError, KeyError, TypeError):
                code, message = f"HTTP {response.status_code}", ""
            raise _arm_error(f"{code}: {message[:200]}" if message else code, resource_id, status=response.status_code)
        try:
            return dict(response.json())
        except (ValueError, TypeError):
            raise _arm_error("the answer is not JSON", resource_id, status=200) from None


def _arm_error(detail: str, resource_id: str, *, status: int | None = None, retryable: bool = False) -> AuthError:
    found = diagnose("ArmPermissionsUnreadable", resource=resource_id, detail=detail)
    return AuthError(
        found.code, cause=found.cause, fix=found.fix, step=STEP, detail=detail, status=status, retryable=retryable
    )


@dataclass
class _Findings:
    missing: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def miss(self, code: str, **context: Any) -> None:
        self.missing.append(_entry(code, **context))

    def warn(self, code: str, **context: Any) -> None:
        self.warnings.append(_entry(code, **context))

    def unchecked(self, what: str, exc: AuthError) -> None:
        self.warnings.append({"code": exc.code, "title": f"{what} not checked", "cause": exc.cause, "fix": exc.fix})


def _entry(code: str, **context: Any) -> dict[str, str]:
    found = diagnose(code, **context)
    return {"code": found.code, "title": found.title, "cause": found.cause, "fix": found.fix}


def rotation_step(
    settings: Settings,
    credential: Any,
    dv_credential: Any,
    now: float,
    *,
    env: Mapping[str, str] | None = None,
    graph: GraphReader | None = None,
    arm: ArmPermissions | None = None,
) -> StepResult:
    """Check, read-only, that the managed identity (``credential``, the worker's) can rotate the Dataverse
    credential; ``graph`` and ``arm`` are built from the settings unless given."""
    try:
        config = RotationCheckSettings.from_env(env)
    except ConfigError as exc:
        return StepResult(
            STEP, "fail", f"{len(exc.problems)} problem(s)", "ConfigError", "; ".join(exc.problems),
            "Correct the settings listed (app settings in Azure; .devstack/env or local.settings.json locally).",
        )  # fmt: skip
    if not config.enabled:
        return StepResult(
            STEP, "skip", f"skipped: {EnvVars.ROTATION_ENABLED}=false (the credential is rotated by hand)"
        )
    if graph is None:
        from shared.graph import GraphReader

        graph = GraphReader(settings.graph_url, credential, timeout_s=settings.http_timeout_s)
    if arm is None:
        arm = ArmPermissions(config.arm_url, credential, timeout_s=settings.http_timeout_s)
    identity = _identity(settings)
    found = _Findings()
    claims = _graph_claims(settings, credential, found)
    if claims is not None:
        _graph_rights(settings, graph, claims, identity, found)
    if dv_credential.kind == "certificate":
        _registered_certificate(settings, graph, dv_credential, now, found)
    object_id = str((claims or {}).get("oid") or "") or None
    _key_vault_rights(settings, config.key_vault_resource_id, arm, identity, object_id, found)
    return _result(found, claims)


def _identity(settings: Settings) -> str:
    from shared.identity.managed_identity import identity_label

    return f"The function app's {identity_label(settings)} managed identity"


def _graph_claims(settings: Settings, credential: Any, found: _Findings) -> dict[str, Any] | None:
    import jwt

    try:
        token = credential.get_token(f"{settings.graph_url}/.default").token
        # Read, not verified: this is our own token, just handed to us by the managed-identity endpoint, and the
        # doctor only reads what it says about us (our object id, our app roles). Nothing is granted on its
        # strength; Graph checks it when rotation uses it.
        claims = jwt.decode(token, options={"verify_signature": False})
    except Exception as exc:  # not a JWT, or no token (the identity worked moments ago for Key Vault): go on
        found.unchecked("Graph permission", _unreadable("GraphTokenUnreadable", type(exc).__name__))
        return None
    return dict(claims)


def _unreadable(code: str, detail: str) -> AuthError:
    entry = diagnose(code, detail=detail)
    return AuthError(entry.code, cause=entry.cause, fix=entry.fix, step=STEP, detail=detail)


def _graph_rights(
    settings: Settings, graph: GraphReader, claims: dict[str, Any], identity: str, found: _Findings
) -> None:
    roles = {str(r) for r in claims.get("roles") or []}
    object_id = str(claims.get("oid") or "")
    held = ", ".join(sorted(roles)) or "none"
    if OWNED_BY in roles:
        found.checked.append(f"Graph {OWNED_BY}")
    if READ_WRITE_ALL in roles:
        found.checked.append(f"Graph {READ_WRITE_ALL}")
        found.warn("RotationGraphPermissionBroad", identity=identity, client_id=settings.client_id)
    if not roles & {OWNED_BY, READ_WRITE_ALL}:
        found.miss("RotationGraphPermissionMissing", identity=identity, client_id=settings.client_id, detail=held)
    if READ_WRITE_ALL in roles and OWNED_BY not in roles:
        return  # ReadWrite.All reaches the registration without owning it
    try:
        owners = graph.owners(settings.client_id)
    except AuthError as exc:
        found.unchecked("ownership", exc)
        return
    if object_id and object_id.lower() in {o.lower() for o in owners}:
        found.checked.append(f"owner of {settings.client_id}")
    else:
        found.miss(
            "RotationNotOwner", identity=identity, client_id=settings.client_id, object_id=object_id or "<unknown>"
        )


def _registered_certificate(settings: Settings, graph: GraphReader, dv_credential: Any, now: float,
                            found: _Findings) -> None:  # fmt: skip
    from shared.graph import graph_time

    try:
        app = graph.application(settings.client_id, select="id,keyCredentials")
    except AuthError as exc:
        found.unchecked("the registered certificate", exc)
        return
    wanted = bytes.fromhex(dv_credential.thumbprint or "")
    for key in app.get("keyCredentials") or []:
        try:
            if base64.b64decode(key.get("customKeyIdentifier") or "") != wanted:
                continue
            start, end = key.get("startDateTime"), key.get("endDateTime")
            if (start is None or graph_time(start).timestamp() <= now) and (
                end is None or now < graph_time(end).timestamp()
            ):
                found.checked.append(f"certificate {dv_credential.thumbprint} registered and valid in Entra")
                return
        except (ValueError, TypeError):
            continue
    found.miss("RotationCertificateNotRegistered", client_id=settings.client_id, name=settings.credential_name,
               detail=dv_credential.thumbprint or "?")  # fmt: skip


def _key_vault_rights(settings: Settings, vault_id: str | None, arm: ArmPermissions, identity: str,
                      object_id: str | None, found: _Findings) -> None:  # fmt: skip
    name = settings.credential_name
    if not vault_id or not _VAULT_ID.fullmatch(vault_id):
        detail = (
            f"{EnvVars.KEY_VAULT_RESOURCE_ID} is not set"
            if not vault_id
            else f"{EnvVars.KEY_VAULT_RESOURCE_ID}='{vault_id[:160]}' is not a vault's resource id"
        )
        found.warn("RotationKeyVaultNotChecked", name=name, detail=detail)
        return
    if settings.uses_certificate:
        wanted = [(f"certificates/{name}", READ_CERTIFICATE_ACTION), (f"secrets/{name}", GET_ACTION),
                  (f"secrets/{name}", READ_METADATA_ACTION)]  # fmt: skip
        code = "RotationCertificateRoleMissing"
    else:
        wanted = [(f"secrets/{name}", SET_ACTION), (f"secrets/{name}", UPDATE_ACTION)]
        code = "RotationKeyVaultRoleMissing"
    lacking = []
    for scope in dict.fromkeys(scope for scope, _ in wanted):
        try:
            entries = arm.list_for(f"{vault_id}/{scope}")
        except AuthError as exc:
            found.unchecked("Key Vault role", exc)
            return
        lacking += [f"{action} on {scope}" for s, action in wanted if s == scope and not permitted(entries, action)]
    if lacking:
        found.miss(code, identity=identity, name=name, resource=vault_id, object_id=object_id,
                   detail="; ".join(lacking))  # fmt: skip
        return
    if settings.uses_certificate:
        found.checked.append(f"Key Vault read of certificate {name}'s versions")
        return
    try:
        vault_wide = arm.list_for(vault_id)
    except AuthError as exc:
        found.checked.append(f"Key Vault write on secret {name}")
        found.unchecked("the Key Vault role's scope", exc)
        return
    if permitted(vault_wide, SET_ACTION):
        found.checked.append(f"Key Vault write on secret {name} (vault-wide)")
        found.warn("RotationKeyVaultRoleBroad", identity=identity, name=name, resource=vault_id)
    else:
        found.checked.append(f"Key Vault write scoped to secret {name}")


def _result(found: _Findings, claims: Mapping[str, Any] | None) -> StepResult:
    details: dict[str, Any] = {"checked": found.checked, "missing": found.missing, "warnings": found.warnings}
    if claims is not None:
        details["object_id"] = claims.get("oid")
        details["graph_roles"] = sorted(str(r) for r in claims.get("roles") or [])
    shown = found.missing + found.warnings  # every missing piece first, then what works but should not be so
    if not shown:
        return StepResult(STEP, "ok", "rotation can run: " + ", ".join(found.checked), details=details)
    summary = "; ".join(e["title"] for e in found.warnings)
    if found.missing:
        summary = "missing: " + "; ".join(e["title"] for e in found.missing) + (f"; also: {summary}" if summary else "")
    return StepResult(
        STEP,
        # The Dataverse chain works without these: rotation would fail and alert, and the expiry alerts remain.
        "warn",
        summary,
        ", ".join(e["code"] for e in shown),
        _numbered(e["cause"] for e in shown),
        _numbered(e["fix"] for e in shown),
        details,
    )


def _numbered(texts: Iterable[str]) -> str:
    items: Sequence[str] = list(texts)
    return items[0] if len(items) == 1 else " ".join(f"({i}) {t}" for i, t in enumerate(items, 1))
