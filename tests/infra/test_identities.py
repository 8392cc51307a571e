"""Which identity gets which role, and what the app authenticates with, in both identity setups.

With the system identity only, it gets every role. With a user-assigned identity as well, the app uses that one
for storage (``AzureWebJobsStorage__credential``/``__clientId``), for its deployment package and for Key Vault
(``AZURE_CLIENT_ID``), so that one must hold the same roles; the system identity keeps its own (telemetry still
authenticates with it). Every role assignment's name (``guid(...)``) differs per principal: two principals
sharing one name would make ARM overwrite one assignment with the other.

main.bicep is evaluated for each setup (tests/infra/bicep_eval.py): what only ARM knows stays symbolic, so the
system identity's principal is ``app.outputs.principalId``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.devstack_process import ROOT
from tests.infra.bicep_eval import Instance, Unknown, instantiate, render
from tests.infra.flex_rules import REQUIRED_PARAMS, SITES
from tests.infra.planting import planted_copy
from tests.infra.test_bicep_contract import EXPECTED_ROLES
from tests.infra.test_flex_rules import USER_ASSIGNED

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
ROLE_ASSIGNMENTS = "Microsoft.Authorization/roleAssignments"
SYSTEM_PRINCIPAL = Unknown("app.outputs.principalId")
USER_PRINCIPAL = USER_ASSIGNED["userAssignedIdentityPrincipalId"]
CERTIFICATE = {"dataverseCertificateName": "dataverse-cert"}
ROLE_NAMES = {guid: name for name, guid in EXPECTED_ROLES.items()}
ALWAYS = frozenset(EXPECTED_ROLES.values()) - {EXPECTED_ROLES["keyVaultCertificateUserRoleId"]}
WITH_CERTIFICATE = frozenset(EXPECTED_ROLES.values())
USER_ASSIGNED_SETTINGS = {
    "AZURE_CLIENT_ID": USER_ASSIGNED["userAssignedIdentityClientId"],
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": USER_ASSIGNED["userAssignedIdentityClientId"],
}


@dataclass(frozen=True)
class Grant:
    principal: Any  # a principal id, or the Unknown that stands for the system identity's
    role: str  # the built-in role's GUID
    name: Any  # the assignment's name, guid(...) as evaluated
    resource: str  # the module symbol and resource symbol that declare it


def deployment(root: Path, params: Mapping[str, Any]) -> Instance:
    return instantiate(root, {**REQUIRED_PARAMS, **params})


def grants(root: Path, params: Mapping[str, Any]) -> list[Grant]:
    found = []
    for instance in deployment(root, params).walk():
        for declaration, body in instance.resources(ROLE_ASSIGNMENTS):
            definition = render(body["properties"]["roleDefinitionId"])
            roles = [guid for guid in ROLE_NAMES if guid in definition]
            assert len(roles) == 1, f"{instance.symbol}.{declaration.symbol}: which role is {definition}?"
            where = f"{instance.symbol}.{declaration.symbol}"
            found.append(Grant(body["properties"]["principalId"], roles[0], body["name"], where))
    return found


def site(root: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    for instance in deployment(root, params).walk():
        for _, body in instance.resources(SITES):
            return body
    raise AssertionError("no function app is deployed")


def identity_problems(root: Path, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with the identities of the templates in ``root`` for ``params``: [] when nothing is."""
    user_assigned = bool(params.get("userAssignedIdentityId"))
    roles = WITH_CERTIFICATE if params.get("dataverseCertificateName") else ALWAYS
    expected: dict[Any, frozenset[str]] = {SYSTEM_PRINCIPAL: roles}
    if user_assigned:
        expected[USER_PRINCIPAL] = roles
    found = grants(root, params)
    held: dict[Any, set[str]] = {}
    for grant in found:
        held.setdefault(grant.principal, set()).add(grant.role)
    problems = []
    for principal in sorted({*expected, *held}, key=render):
        missing = expected.get(principal, frozenset()) - held.get(principal, set())
        extra = held.get(principal, set()) - expected.get(principal, frozenset())
        if missing:
            problems.append(f"{render(principal)} lacks {sorted(ROLE_NAMES[guid] for guid in missing)}")
        if extra:
            problems.append(f"{render(principal)} should not hold {sorted(ROLE_NAMES[guid] for guid in extra)}")
    for name, count in Counter(render(grant.name) for grant in found).items():
        if count > 1:
            problems.append(f"{count} role assignments share the name {name}")
    app = site(root, params)
    authentication = app["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    wanted_authentication: dict[str, Any] = (
        {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": params["userAssignedIdentityId"]}
        if user_assigned else {"type": "SystemAssignedIdentity"}
    )  # fmt: skip
    if authentication != wanted_authentication:
        problems.append(f"deployment storage authentication is {authentication}, not {wanted_authentication}")
    identity = app["identity"]
    wanted_identity: dict[str, Any] = (
        {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {params["userAssignedIdentityId"]: {}}}
        if user_assigned else {"type": "SystemAssigned", "userAssignedIdentities": None}
    )  # fmt: skip
    if identity != wanted_identity:
        problems.append(f"the app's identity is {identity}, not {wanted_identity}")
    settings = {item["name"]: item["value"] for item in app["properties"]["siteConfig"]["appSettings"]}
    for name, value in USER_ASSIGNED_SETTINGS.items():
        wanted = value if user_assigned else None
        if settings.get(name) != wanted:
            problems.append(f"app setting {name} is {settings.get(name)!r}, not {wanted!r}")
    return problems


SETUPS = {
    "system identity": {},
    "system identity, certificate": CERTIFICATE,
    "system and user-assigned identity": USER_ASSIGNED,
    "system and user-assigned identity, certificate": {**USER_ASSIGNED, **CERTIFICATE},
}


@pytest.mark.parametrize("params", SETUPS.values(), ids=list(SETUPS))
def test_each_identity_the_app_uses_holds_its_roles(params: dict[str, str]) -> None:
    assert identity_problems(INFRA, params) == []


def test_the_system_identity_alone_gets_every_role_and_no_user_assigned_setting() -> None:
    found = grants(INFRA, {})
    assert {grant.principal for grant in found} == {SYSTEM_PRINCIPAL}
    assert {grant.role for grant in found} == ALWAYS
    settings = {item["name"] for item in site(INFRA, {})["properties"]["siteConfig"]["appSettings"]}
    assert not settings & set(USER_ASSIGNED_SETTINGS)


def test_a_user_assigned_identity_gets_the_same_roles_under_names_of_its_own() -> None:
    found = grants(INFRA, USER_ASSIGNED)
    by_principal = {p: {g.role for g in found if g.principal == p} for p in (SYSTEM_PRINCIPAL, USER_PRINCIPAL)}
    assert by_principal == {SYSTEM_PRINCIPAL: ALWAYS, USER_PRINCIPAL: ALWAYS}
    names = {render(grant.name) for grant in found}
    assert len(names) == len(found) == 2 * len(ALWAYS)
    assert all(USER_PRINCIPAL in render(grant.name) for grant in found if grant.principal == USER_PRINCIPAL)
    assert {grant.resource.split(".")[0] for grant in found} == {"roles", "userAssignedRoles"}


@dataclass(frozen=True)
class Plant:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    problem: str  # in the first problem named
    count: int = 1  # how many problems the one mistake makes


USER_ROLES_MODULE = "module userAssignedRoles 'modules/roles.bicep' = if (useUserAssigned) {"
PLANTS = [
    Plant("roles for the system identity only", "main.bicep",
          ((USER_ROLES_MODULE, "module userAssignedRoles 'modules/roles.bicep' = if (false) {"),),
          f"{USER_PRINCIPAL!r} lacks ['keyVaultReaderRoleId', 'keyVaultSecretsUserRoleId', "
          "'monitoringMetricsPublisherRoleId', 'storageBlobDataOwnerRoleId', 'storageQueueDataContributorRoleId', "
          "'storageTableDataContributorRoleId']"),
    Plant("the user-assigned roles given to the system identity", "main.bicep",
          (("    principalId: userAssignedIdentityPrincipalId\n", "    principalId: app.outputs.principalId\n"),),
          f"{USER_PRINCIPAL!r} lacks", count=1 + len(ALWAYS)),  # and each name twice
    Plant("assignment names without the principal", "modules/roles.bicep",
          (("guid(storage.id, principalId, storageBlobDataOwnerRoleId)",
            "guid(storage.id, storageBlobDataOwnerRoleId)"),),
          "2 role assignments share the name guid(storage.id, 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')"),
    Plant("the package read with the system identity", "modules/functionapp.bicep",
          (("type: 'UserAssignedIdentity'", "type: 'SystemAssignedIdentity'"),),
          "deployment storage authentication is {'type': 'SystemAssignedIdentity', 'userAssignedIdentityResourceId'"),
    Plant("storage without the user-assigned client id", "main.bicep",
          (("    name: 'AzureWebJobsStorage__clientId'\n    value: userAssignedIdentityClientId\n  }\n", ""),
           ("    value: 'managedidentity'\n  }\n  {\n", "    value: 'managedidentity'\n  }\n")),
          "app setting AzureWebJobsStorage__clientId is None, not '00000000-0000-0000-0000-0000000000a1'"),
]  # fmt: skip


@pytest.mark.parametrize("plant", PLANTS, ids=[plant.id for plant in PLANTS])
def test_a_planted_identity_mistake_is_named(tmp_path: Path, plant: Plant) -> None:
    copy = planted_copy(tmp_path, plant.file, plant.edits)
    problems = identity_problems(copy, USER_ASSIGNED)
    assert len(problems) == plant.count, problems
    assert plant.problem in problems[0]
    if plant.count > 1:
        assert all("role assignments share the name" in problem for problem in problems[1:]), problems
