"""The doctor's rotation-readiness step against in-memory Graph (the real GraphReader over FakeHttp, with the
owners route) and an in-memory ARM answering "Permissions - List For Resource" from role assignments the way
Azure composes them (a vault-wide assignment covers the vault and its objects, a scoped one that object only;
the role definitions' data actions as Azure publishes them)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from azure.core.credentials import AccessToken

from shared.config import Settings
from shared.graph import GraphReader
from shared.identity.credential import DataverseCredential
from shared.identity.doctor_report import StepResult
from shared.identity.doctor_rotation import (
    ARM_SCOPE,
    STEP,
    ArmPermissions,
    action_matches,
    permitted,
    rotation_step,
)
from tests.fakes import FakeGraph, FakeHttp, Recorded, answer
from tests.fakes.http import Answer
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket

pytestmark = pytest.mark.unit

GRAPH = "https://graph.microsoft.com"
ARM = "https://management.azure.com"
APP = "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11"
OID = "2c8e4a6b-3f1d-4d7b-8a9c-5e1f3b7d9a22"
OTHER_OWNER = "9f1e2d3c-0000-4000-8000-00000000beef"
VAULT_ID = (
    "/subscriptions/0b1c2d3e-0000-4000-8000-000000000001/resourceGroups/rg-dvbridge"
    "/providers/Microsoft.KeyVault/vaults/kv-dvbridge"
)
SECRET = "dataverse-client-secret"
CERT = "dataverse-cert"
THUMBPRINT = "0123456789abcdef0123456789abcdef01234567"
NOW = time.time()
ARM_TOKEN = "arm-token-0123456789"

KV = "Microsoft.KeyVault/vaults"
ROLES: dict[str, dict[str, list[str]]] = {  # dataActions and notDataActions of the built-in roles
    "Key Vault Administrator": {"dataActions": [f"{KV}/*"]},
    "Key Vault Secrets Officer": {"dataActions": [f"{KV}/secrets/*"]},
    "Key Vault Secrets User": {"dataActions": [f"{KV}/secrets/getSecret/action", f"{KV}/secrets/readMetadata/action"]},
    "Key Vault Certificate User": {"dataActions": [f"{KV}/certificates/read", f"{KV}/secrets/getSecret/action",
                                                   f"{KV}/secrets/readMetadata/action", f"{KV}/keys/read"]},
    "Key Vault Reader": {"dataActions": [f"{KV}/*/read", f"{KV}/secrets/readMetadata/action"]},
    # a custom role: every secret action but changing attributes (so an old version could not be disabled)
    "Secrets Writer No Update": {"dataActions": [f"{KV}/secrets/*"], "notDataActions": [f"{KV}/secrets/update/action"]},
}  # fmt: skip


def token(roles: list[str], oid: str = OID) -> str:
    claims = {"aud": GRAPH, "oid": oid, "roles": roles, "exp": int(NOW) + 3600, "idtyp": "app"}
    return jwt.encode(claims, "not-the-signing-key-of-anyone-at-all", algorithm="HS256")


class Credential:
    """The managed identity: a Graph token with the app roles it holds, an ARM token, and the scopes asked."""

    def __init__(self, graph_token: str) -> None:
        self.graph_token = graph_token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        value = self.graph_token if scopes == (f"{GRAPH}/.default",) else ARM_TOKEN
        return AccessToken(value, int(NOW) + 3600)


@dataclass
class FakeArm:
    """ARM's permissions listing over the role assignments ``(role, scope)``: scope "" is the vault."""

    assignments: list[tuple[str, str]] = field(default_factory=list)
    page_size: int = 100
    failure: Answer | None = None

    def __call__(self, request: Recorded) -> Answer:
        if request.headers.get("Authorization") != f"Bearer {ARM_TOKEN}":
            return answer(
                401, {"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}
            )
        if self.failure is not None:
            return self.failure
        if request.method != "GET":
            return answer(405, {"error": {"code": "MethodNotAllowed", "message": request.method}})
        suffix = "/providers/Microsoft.Authorization/permissions"
        if request.query.get("api-version") != "2022-04-01" or not request.path.endswith(suffix):
            return answer(400, {"error": {"code": "BadRequest", "message": request.url}})
        scope = request.path.removesuffix(suffix)
        entries = []
        for role, assigned in self.assignments:
            at = VAULT_ID + (f"/{assigned}" if assigned else "")
            if scope.lower() == at.lower() or (not assigned and scope.lower().startswith(VAULT_ID.lower() + "/")):
                definition = ROLES[role]
                entries.append({"actions": [], "notActions": [], "dataActions": definition["dataActions"],
                                "notDataActions": definition.get("notDataActions", [])})  # fmt: skip
        start = int(request.query.get("$skiptoken", "0"))
        page: dict[str, Any] = {"value": entries[start : start + self.page_size]}
        if start + self.page_size < len(entries):
            page["nextLink"] = f"{ARM}{scope}{suffix}?api-version=2022-04-01&$skiptoken={start + self.page_size}"
        return answer(200, page)


@dataclass
class World:
    http: FakeHttp
    graph: FakeGraph
    arm: FakeArm
    credential: Credential
    owners: list[str]
    owners_failure: Answer | None = None
    env: dict[str, str] = field(default_factory=dict)

    def grant(self, *roles: str) -> None:
        self.credential.graph_token = self.graph.credential.token = token(list(roles))

    def run(self, *, certificate: bool = False, dv_credential: Any = None) -> StepResult:
        settings = Settings(
            dataverse_url="https://contoso.crm4.dynamics.com",
            tenant_id="72f988bf-86f1-41af-91ab-2d7cd011db47",
            client_id=APP,
            client_secret_name=None if certificate else SECRET,
            certificate_name=CERT if certificate else None,
            key_vault_url="https://kv-dvbridge.vault.azure.net",
            graph_url=GRAPH,
        )
        if dv_credential is None:
            dv_credential = DataverseCredential("certificate", CERT, thumbprint=THUMBPRINT) if certificate else \
                DataverseCredential("secret", SECRET, secret="abc~secret-value")  # fmt: skip
        graph = GraphReader(GRAPH, self.credential, timeout_s=5, session=self.http.session())
        arm = ArmPermissions(ARM, self.credential, timeout_s=5, session=self.http.session())
        return rotation_step(settings, self.credential, dv_credential, NOW, env=self.env, graph=graph, arm=arm)

    def owners_answer(self, request: Recorded) -> Answer:
        if self.owners_failure is not None:
            return self.owners_failure
        if request.headers.get("Authorization") != f"Bearer {self.graph.credential.token}":
            return answer(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
        value = [{"@odata.type": "#microsoft.graph.servicePrincipal", "id": o} for o in self.owners]
        return answer(200, {"@odata.context": f"{GRAPH}/v1.0/$metadata#directoryObjects", "value": value})


@pytest.fixture
def world() -> World:
    """The default world: OwnedBy (and Read.All), owner of the app, Secrets Officer on the Dataverse secret."""
    http = FakeHttp()
    roles = ["Application.Read.All", "Application.ReadWrite.OwnedBy"]
    graph = FakeGraph(http, token=token(roles))
    graph.add_app(APP, "dvbridge-sync", key_credentials=[{
        "keyId": "k1", "type": "AsymmetricX509Cert", "usage": "Verify",
        "customKeyIdentifier": base64.b64encode(bytes.fromhex(THUMBPRINT)).decode(),
        "startDateTime": _iso(-30), "endDateTime": _iso(300)}])  # fmt: skip
    arm = FakeArm([("Key Vault Secrets User", ""), ("Key Vault Certificate User", ""), ("Key Vault Reader", ""),
                   ("Key Vault Secrets Officer", f"secrets/{SECRET}")])  # fmt: skip
    http.route(ARM, arm)
    env = {"ARM_URL": ARM, "KEY_VAULT_RESOURCE_ID": VAULT_ID}
    found = World(http, graph, arm, Credential(graph.credential.token), [OTHER_OWNER, OID], env=env)
    http.route(f"{GRAPH}/v1.0/applications(appId='{APP}')/owners", found.owners_answer)
    return found


def _iso(days: float) -> str:
    return f"{datetime.fromtimestamp(NOW, UTC) + timedelta(days=days):%Y-%m-%dT%H:%M:%SZ}"


def codes(step: StepResult) -> list[str]:
    return [e["code"] for e in step.details["missing"]]


def warnings(step: StepResult) -> list[str]:
    return [e["code"] for e in step.details["warnings"]]


# -- the whole step ------------------------------------------------------------------------------------------------
def test_the_default_world_is_ready_and_the_step_only_reads(world: World) -> None:
    step = world.run()
    assert (step.name, step.status, step.code) == (STEP, "ok", None), step
    assert step.details["checked"] == ["Graph Application.ReadWrite.OwnedBy", f"owner of {APP}",
                                       f"Key Vault write scoped to secret {SECRET}"]  # fmt: skip
    assert step.details["object_id"] == OID
    assert {r.method for r in world.http.requests} == {"GET"}  # read-only
    assert set(world.credential.scopes) == {f"{GRAPH}/.default", ARM_SCOPE}
    arm_paths = [r.path for r in world.http.to(ARM)]
    assert arm_paths == [f"{VAULT_ID}/secrets/{SECRET}/providers/Microsoft.Authorization/permissions",
                         f"{VAULT_ID}/providers/Microsoft.Authorization/permissions"]  # fmt: skip


def test_without_the_graph_permission_it_is_named_with_the_grant_script(world: World) -> None:
    world.grant("Application.Read.All")
    step = world.run()
    assert (step.status, codes(step)) == ("warn", ["RotationGraphPermissionMissing"])
    assert step.code == "RotationGraphPermissionMissing"
    assert "Application.Read.All" in (step.cause or "")  # what the token holds
    assert "infra/scripts/grant-graph-permission.sh" in (step.fix or "")
    assert "Application.ReadWrite.OwnedBy" in (step.fix or "")
    assert APP in (step.fix or "")


def test_without_ownership_it_is_named_with_az_ad_app_owner_add(world: World) -> None:
    world.owners = [OTHER_OWNER]
    step = world.run()
    assert (step.status, codes(step)) == ("warn", ["RotationNotOwner"])
    assert OID in (step.cause or "")
    assert f"az ad app owner add --id {APP} --owner-object-id {OID}" in (step.fix or "")
    assert "grant-graph-permission.sh" in (step.fix or "")


def test_without_the_key_vault_role_it_names_the_actions_and_the_scoped_assignment(world: World) -> None:
    world.arm.assignments = [("Key Vault Secrets User", ""), ("Key Vault Reader", "")]
    step = world.run()
    assert (step.status, codes(step)) == ("warn", ["RotationKeyVaultRoleMissing"])
    assert "secrets/setSecret/action" in (step.cause or "")
    assert "secrets/update/action" in (step.cause or "")
    assert "Key Vault Secrets Officer" in (step.fix or "")
    assert f"--assignee {OID} --role 'Key Vault Secrets Officer' --scope {VAULT_ID}/secrets/{SECRET}" in (
        step.fix or ""
    )
    assert "grantRotationAccess" in (step.fix or "")


def test_every_missing_piece_is_reported_not_only_the_first(world: World) -> None:
    world.grant("Application.Read.All")
    world.owners = []
    world.arm.assignments = [("Key Vault Secrets User", "")]
    step = world.run()
    assert codes(step) == ["RotationGraphPermissionMissing", "RotationNotOwner", "RotationKeyVaultRoleMissing"]
    assert step.code == "RotationGraphPermissionMissing, RotationNotOwner, RotationKeyVaultRoleMissing"
    assert step.summary.startswith("missing: ")
    for n in (1, 2, 3):
        assert f"({n}) " in (step.cause or "")
        assert f"({n}) " in (step.fix or "")
    assert all(e["cause"] and e["fix"] and e["title"] for e in step.details["missing"])


def test_read_write_all_passes_with_a_warning_and_needs_no_ownership(world: World) -> None:
    world.grant("Application.ReadWrite.All")
    world.owners = []
    step = world.run()
    assert (step.status, codes(step), warnings(step)) == ("warn", [], ["RotationGraphPermissionBroad"])
    assert "every app registration" in (step.cause or "")
    assert "Application.ReadWrite.OwnedBy" in (step.fix or "")
    assert not world.http.to(f"{GRAPH}/v1.0/applications(appId='{APP}')/owners")


def test_a_vault_wide_secrets_officer_passes_with_a_warning(world: World) -> None:
    world.arm.assignments = [("Key Vault Secrets User", ""), ("Key Vault Secrets Officer", "")]
    step = world.run()
    assert (step.status, codes(step), warnings(step)) == ("warn", [], ["RotationKeyVaultRoleBroad"])
    assert f"{VAULT_ID}/secrets/{SECRET}" in (step.fix or "")
    assert f"Key Vault write on secret {SECRET} (vault-wide)" in step.details["checked"]


def test_a_vault_administrator_is_broad_too(world: World) -> None:
    world.arm.assignments = [("Key Vault Administrator", "")]
    step = world.run()
    assert warnings(step) == ["RotationKeyVaultRoleBroad"]


def test_not_data_actions_take_away_from_their_own_role_only(world: World) -> None:
    world.arm.assignments = [("Secrets Writer No Update", f"secrets/{SECRET}")]
    step = world.run()
    assert codes(step) == ["RotationKeyVaultRoleMissing"]
    assert "update/action" in (step.cause or "")
    assert "setSecret/action" not in (step.cause or "")
    world.arm.assignments.append(("Key Vault Secrets Officer", f"secrets/{SECRET}"))  # another role grants it
    assert world.run().status == "ok"


def test_without_the_vault_resource_id_it_warns_and_says_how_to_set_it(world: World) -> None:
    del world.env["KEY_VAULT_RESOURCE_ID"]
    step = world.run()
    assert (step.status, codes(step), warnings(step)) == ("warn", [], ["RotationKeyVaultNotChecked"])
    assert "KEY_VAULT_RESOURCE_ID is not set" in (step.cause or "")
    assert "KEY_VAULT_RESOURCE_ID" in (step.fix or "")
    assert "az keyvault show" in (step.fix or "")
    assert not world.http.to(ARM)


def test_a_resource_id_that_is_not_a_vault_is_not_sent(world: World) -> None:
    world.env["KEY_VAULT_RESOURCE_ID"] = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/x/y"
    step = world.run()
    assert warnings(step) == ["RotationKeyVaultNotChecked"]
    assert "is not a vault's resource id" in (step.cause or "")
    assert not world.http.to(ARM)


def test_rotation_switched_off_skips_with_the_reason_and_asks_nothing(world: World) -> None:
    world.env["ROTATION_ENABLED"] = "false"
    step = world.run()
    assert (step.status, step.summary) == (
        "skip",
        "skipped: ROTATION_ENABLED=false (the credential is rotated by hand)",
    )
    assert world.http.requests == []
    assert world.credential.scopes == []


def test_an_invalid_rotation_setting_fails_the_step_naming_it(world: World) -> None:
    world.env["ROTATION_ENABLED"] = "sometimes"
    step = world.run()
    assert (step.status, step.code) == ("fail", "ConfigError")
    assert "ROTATION_ENABLED" in (step.cause or "")


def test_arm_refusing_leaves_the_key_vault_role_unchecked_with_its_answer(world: World) -> None:
    message = "The client does not have authorization to perform action 'Microsoft.Authorization/permissions/read'."
    world.arm.failure = answer(403, {"error": {"code": "AuthorizationFailed", "message": message}})
    step = world.run()
    assert (step.status, codes(step), warnings(step)) == ("warn", [], ["ArmPermissionsUnreadable"])
    assert "AuthorizationFailed" in (step.cause or "")
    assert "Key Vault Reader" in (step.fix or "")
    assert len(world.http.to(ARM)) == 1  # the doctor's probe: one attempt


def test_arm_unreachable_is_a_warning_naming_the_service(world: World) -> None:
    world.http = FakeHttp()  # nothing listens at ARM any more; Graph is routed again below
    world.http.route(GRAPH, world.graph)
    world.http.route(f"{GRAPH}/v1.0/applications(appId='{APP}')/owners", world.owners_answer)
    step = world.run()
    assert warnings(step) == ["ArmPermissionsUnreadable"]
    assert "Azure Resource Manager" in (step.cause or "")
    assert codes(step) == []


def test_arm_pages_are_followed(world: World) -> None:
    world.arm.page_size = 1
    world.arm.assignments = [("Key Vault Secrets User", ""), ("Key Vault Reader", ""),
                             ("Key Vault Secrets Officer", f"secrets/{SECRET}")]  # fmt: skip
    assert world.run().status == "ok"
    assert any("skiptoken=2" in r.url for r in world.http.to(ARM))


def test_owners_unreadable_is_a_warning_not_a_verdict(world: World) -> None:
    world.owners_failure = answer(
        403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}
    )
    step = world.run()
    assert (step.status, codes(step), warnings(step)) == ("warn", [], ["Authorization_RequestDenied"])
    assert step.details["warnings"][0]["title"] == "ownership not checked"


def test_a_graph_token_that_is_not_a_jwt_leaves_graph_unchecked_and_key_vault_checked(world: World) -> None:
    world.credential.graph_token = world.graph.credential.token = "opaque-token"
    step = world.run()
    assert warnings(step) == ["GraphTokenUnreadable"]
    assert f"Key Vault write scoped to secret {SECRET}" in step.details["checked"]


# -- a certificate credential -------------------------------------------------------------------------------------
def test_a_certificate_needs_its_versions_readable_and_a_valid_registration(world: World) -> None:
    step = world.run(certificate=True)
    assert step.status == "ok", step
    assert f"certificate {THUMBPRINT} registered and valid in Entra" in step.details["checked"]
    assert f"Key Vault read of certificate {CERT}'s versions" in step.details["checked"]
    assert [r.path.split("/providers/Microsoft.Authorization")[0] for r in world.http.to(ARM)] == [
        f"{VAULT_ID}/certificates/{CERT}", f"{VAULT_ID}/secrets/{CERT}"]  # fmt: skip


def test_a_certificate_without_certificate_user_is_named(world: World) -> None:
    world.arm.assignments = [("Key Vault Secrets User", "")]
    step = world.run(certificate=True)
    assert codes(step) == ["RotationCertificateRoleMissing"]
    assert f"certificates/read on certificates/{CERT}" in (step.cause or "")
    assert "Key Vault Certificate User" in (step.fix or "")


@pytest.mark.parametrize(("start", "end"), [(-30, -1), (2, 300)], ids=["expired", "not-yet-valid"])
def test_a_certificate_outside_its_validity_in_entra_blocks_add_key(world: World, start: int, end: int) -> None:
    world.graph.apps[APP]["keyCredentials"][0].update(startDateTime=_iso(start), endDateTime=_iso(end))
    step = world.run(certificate=True)
    assert codes(step) == ["RotationCertificateNotRegistered"]
    assert THUMBPRINT in (step.cause or "")
    assert "addKey" in (step.cause or "")


def test_a_certificate_not_registered_at_all_is_named(world: World) -> None:
    other = DataverseCredential("certificate", CERT, thumbprint="ff" * 20)
    step = world.run(certificate=True, dv_credential=other)
    assert codes(step) == ["RotationCertificateNotRegistered"]


# -- Azure's action matching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        (f"{KV}/secrets/setSecret/action", f"{KV}/secrets/setSecret/action", True),
        (f"{KV}/secrets/setsecret/ACTION", f"{KV}/secrets/setSecret/action", True),  # case-insensitive
        (f"{KV}/secrets/*", f"{KV}/secrets/setSecret/action", True),  # * spans segments
        (f"{KV}/*", f"{KV}/secrets/update/action", True),
        ("*", f"{KV}/secrets/update/action", True),
        (f"{KV}/*/read", f"{KV}/certificates/read", True),
        (f"{KV}/*/read", f"{KV}/secrets/setSecret/action", False),
        (f"{KV}/secrets/*", f"{KV}/certificates/read", False),
        (f"{KV}/secrets/getSecret/action", f"{KV}/secrets/setSecret/action", False),
        (f"{KV}/secrets/set", f"{KV}/secrets/setSecret/action", False),  # whole action, not a prefix
        (f"{KV}/secrets.*", f"{KV}/secretsXsetSecret/action", False),  # only * is special: the dot is literal
    ],
)
def test_actions_match_as_azure_matches_them(pattern: str, action: str, matches: bool) -> None:
    assert action_matches(pattern, action) is matches


def test_permitted_needs_one_entry_that_grants_and_does_not_take_away() -> None:
    officer = {"dataActions": [f"{KV}/secrets/*"], "notDataActions": []}
    no_update = {"dataActions": [f"{KV}/secrets/*"], "notDataActions": [f"{KV}/secrets/update/action"]}
    update = f"{KV}/secrets/update/action"
    assert not permitted([no_update], update)
    assert permitted([no_update, officer], update)
    assert permitted([no_update], f"{KV}/secrets/setSecret/action")
    assert not permitted([], update)
    assert not permitted([{"actions": ["*"]}], update)  # control-plane actions are not data actions
