"""Which identity gets which role on which scope, and what the app authenticates with, in both identity setups.

With the system identity only, it gets every role. With a user-assigned identity as well, the app uses that one
for storage (``AzureWebJobsStorage__credential``/``__clientId``), for its deployment package and for Key Vault
(``AZURE_CLIENT_ID``), so that one must hold the same roles; the system identity keeps its read roles (telemetry
still authenticates with it). Every role assignment's name (``guid(...)``) differs per principal: two principals
sharing one name would make ARM overwrite one assignment with the other.

Each alert rule (modules/alerts.bicep) queries with a system-assigned identity of its own, which holds Reader on
Application Insights and nothing else; the app's identities hold nothing of the rules'.

Rotation's role (``grantRotationAccess``) goes to the identity the app calls Key Vault with, and only there, on the
one object named by the app's credential setting: Key Vault Secrets Officer on ``vault/secrets/<the secret>``,
or Key Vault Certificate User on ``vault/certificates/<the certificate>``. The same role on the vault, or on the
resource group (an assignment without ``scope``), or on another secret, is a problem.

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
from tests.infra.test_bicep_contract import ALERT_RULE_ROLES, EXPECTED_ROLES
from tests.infra.test_flex_rules import USER_ASSIGNED

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
ROLE_ASSIGNMENTS = "Microsoft.Authorization/roleAssignments"
ALERT_RULES = "Microsoft.Insights/scheduledQueryRules"
SYSTEM_PRINCIPAL = Unknown("app.outputs.principalId")
USER_PRINCIPAL = USER_ASSIGNED["userAssignedIdentityPrincipalId"]
CERTIFICATE = {"dataverseCertificateName": "dataverse-cert"}
GRANT = {"grantRotationAccess": True}
ROLE_NAMES = {guid: name for name, guid in {**EXPECTED_ROLES, **ALERT_RULE_ROLES}.items()}
RULE_READS = frozenset({(ALERT_RULE_ROLES["readerRoleId"], "appInsights")})  # what every alert rule's identity holds
SECRETS_OFFICER = EXPECTED_ROLES["keyVaultSecretsOfficerRoleId"]
CERTIFICATE_USER = EXPECTED_ROLES["keyVaultCertificateUserRoleId"]
SCOPES = {  # the read roles and their scopes (module resource symbols), which every identity the app uses holds
    EXPECTED_ROLES["storageBlobDataOwnerRoleId"]: "storage",
    EXPECTED_ROLES["storageQueueDataContributorRoleId"]: "storage",
    EXPECTED_ROLES["storageTableDataContributorRoleId"]: "storage",
    EXPECTED_ROLES["keyVaultSecretsUserRoleId"]: "vault",
    EXPECTED_ROLES["keyVaultReaderRoleId"]: "vault",
    EXPECTED_ROLES["monitoringMetricsPublisherRoleId"]: "appInsights",
}
ALWAYS = frozenset(SCOPES)
ALWAYS_HELD = frozenset(SCOPES.items())
RESOURCE_GROUP = "the resource group"  # the scope of an assignment that names none
CREDENTIAL_OBJECTS = ("microsoft.keyvault/vaults/secrets", "microsoft.keyvault/vaults/certificates")
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
    scope: str = (
        "vault"  # a resource symbol of the module, "vault/secrets/<name>" for a vault object, or RESOURCE_GROUP
    )


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
            found.append(
                Grant(body["properties"]["principalId"], roles[0], body["name"], where, scope_of(instance, body))
            )
    return found


def rule_principals(root: Path, params: Mapping[str, Any]) -> set[Unknown]:
    """The system-assigned identity of each alert rule deployed, as ARM knows it: ``<rule>.identity.principalId``."""
    return {
        Unknown(f"{declaration.symbol}.identity.principalId")
        for instance in deployment(root, params).walk()
        for declaration, _ in instance.resources(ALERT_RULES)
    }


def app_grants(root: Path, params: Mapping[str, Any]) -> list[Grant]:
    """The grants to the app's identities (every one but the alert rules')."""
    rules = rule_principals(root, params)
    return [grant for grant in grants(root, params) if grant.principal not in rules]


def scope_of(instance: Instance, body: dict[str, Any]) -> str:
    """Where an assignment applies: the resource symbol its ``scope`` names (``vault``, ``storage``...), for a
    Key Vault object ``<vault symbol>/<secrets|certificates>/<its evaluated name>``, or RESOURCE_GROUP."""
    if "scope" not in body:
        return RESOURCE_GROUP
    symbol = render(body["scope"])
    target = instance.file.resources.get(symbol)
    if target is None or target.type.lower() not in CREDENTIAL_OBJECTS:
        return symbol
    evaluated = instance.evaluator.body(target)
    name = evaluated["name"] if isinstance(evaluated["name"], str) else render(evaluated["name"])
    return f"{render(evaluated['parent'])}/{target.type.split('/')[-1]}/{name}"


def label(role: str, scope: str) -> str:
    return f"{ROLE_NAMES[role]} on {scope}"


def site(root: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    for instance in deployment(root, params).walk():
        for _, body in instance.resources(SITES):
            return body
    raise AssertionError("no function app is deployed")


def identity_problems(root: Path, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with the identities of the templates in ``root`` for ``params``: [] when nothing is."""
    user_assigned = bool(params.get("userAssignedIdentityId"))
    app = site(root, params)
    settings = {item["name"]: item["value"] for item in app["properties"]["siteConfig"]["appSettings"]}
    expected: dict[Any, frozenset[tuple[str, str]]] = {SYSTEM_PRINCIPAL: ALWAYS_HELD}
    if user_assigned:
        expected[USER_PRINCIPAL] = ALWAYS_HELD
    if params.get("grantRotationAccess"):  # to the identity the app calls Key Vault with, on what it rotates
        rotating = USER_PRINCIPAL if user_assigned else SYSTEM_PRINCIPAL
        certificate = settings.get("DATAVERSE_CERTIFICATE_NAME")
        rotation = (
            (CERTIFICATE_USER, f"vault/certificates/{certificate}") if certificate
            else (SECRETS_OFFICER, f"vault/secrets/{settings.get('DATAVERSE_CLIENT_SECRET_NAME')}")
        )  # fmt: skip
        expected[rotating] = expected[rotating] | {rotation}
    for rule in rule_principals(root, params):
        expected[rule] = RULE_READS
    found = grants(root, params)
    held: dict[Any, set[tuple[str, str]]] = {}
    for grant in found:
        held.setdefault(grant.principal, set()).add((grant.role, grant.scope))
    problems = []
    for principal in sorted({*expected, *held}, key=render):
        missing = expected.get(principal, frozenset()) - held.get(principal, set())
        extra = held.get(principal, set()) - expected.get(principal, frozenset())
        if missing:
            problems.append(f"{render(principal)} lacks {sorted(label(*pair) for pair in missing)}")
        if extra:
            problems.append(f"{render(principal)} should not hold {sorted(label(*pair) for pair in extra)}")
    for name, count in Counter(render(grant.name) for grant in found).items():
        if count > 1:
            problems.append(f"{count} role assignments share the name {name}")
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
    for name, value in USER_ASSIGNED_SETTINGS.items():
        wanted = value if user_assigned else None
        if settings.get(name) != wanted:
            problems.append(f"app setting {name} is {settings.get(name)!r}, not {wanted!r}")
    return problems


SETUPS = {
    f"{who}{what}{rotation}": {**identities, **credential, **grant}
    for who, identities in (("system identity", {}), ("system and user-assigned identity", USER_ASSIGNED))
    for what, credential in (("", {}), (", certificate", CERTIFICATE))
    for rotation, grant in (("", {}), (", rotation access", GRANT))
}


@pytest.mark.parametrize("params", SETUPS.values(), ids=list(SETUPS))
def test_each_identity_the_app_uses_holds_its_roles(params: dict[str, str]) -> None:
    assert identity_problems(INFRA, params) == []


def test_the_system_identity_alone_gets_every_role_and_no_user_assigned_setting() -> None:
    found = app_grants(INFRA, {})
    assert {grant.principal for grant in found} == {SYSTEM_PRINCIPAL}
    assert {(grant.role, grant.scope) for grant in found} == ALWAYS_HELD
    settings = {item["name"] for item in site(INFRA, {})["properties"]["siteConfig"]["appSettings"]}
    assert not settings & set(USER_ASSIGNED_SETTINGS)


def test_a_user_assigned_identity_gets_the_same_roles_under_names_of_its_own() -> None:
    found = app_grants(INFRA, USER_ASSIGNED)
    by_principal = {p: {g.role for g in found if g.principal == p} for p in (SYSTEM_PRINCIPAL, USER_PRINCIPAL)}
    assert by_principal == {SYSTEM_PRINCIPAL: ALWAYS, USER_PRINCIPAL: ALWAYS}
    names = {render(grant.name) for grant in found}
    assert len(names) == len(found) == 2 * len(ALWAYS)
    assert all(USER_PRINCIPAL in render(grant.name) for grant in found if grant.principal == USER_PRINCIPAL)
    assert {grant.resource.split(".")[0] for grant in found} == {"roles", "userAssignedRoles"}


def test_rotation_writes_one_secret_and_reads_one_certificate_never_the_vault() -> None:
    secret = app_grants(INFRA, GRANT)
    rotation = [grant for grant in secret if grant.role not in ALWAYS]
    assert [(g.role, g.scope, g.resource) for g in rotation] == [
        (SECRETS_OFFICER, "vault/secrets/dataverse-client-secret", "roles.secretRotation")
    ]
    assert render(rotation[0].name) == (
        f"guid(dataverseSecret.id, app.outputs.principalId, '{SECRETS_OFFICER}')"
    )  # its own name: the vault-wide roles' names start with vault.id
    certificate = app_grants(INFRA, {**GRANT, **CERTIFICATE})
    assert [(g.role, g.scope) for g in certificate if g.role not in ALWAYS] == [
        (CERTIFICATE_USER, "vault/certificates/dataverse-cert")
    ]
    for params in ({}, CERTIFICATE, USER_ASSIGNED, {**USER_ASSIGNED, **CERTIFICATE}):  # not until asked for
        assert {grant.role for grant in app_grants(INFRA, params)} == ALWAYS, params
    both = grants(INFRA, {**GRANT, **USER_ASSIGNED})
    assert {g.principal for g in both if g.role == SECRETS_OFFICER} == {USER_PRINCIPAL}  # the one that rotates


@pytest.mark.parametrize("params", [{}, {"alertEmail": "ops@example.com"}], ids=["no e-mail", "e-mail"])
def test_each_alert_rule_reads_application_insights_with_an_identity_of_its_own(params: dict[str, str]) -> None:
    rules = rule_principals(INFRA, params)
    assert len(rules) == 8  # whether or not anyone is e-mailed, the rules are deployed (docs/infra.md)
    found = [grant for grant in grants(INFRA, params) if grant.principal in rules]
    held = {grant.principal: {(grant.role, grant.scope)} for grant in found}
    assert held == {rule: set(RULE_READS) for rule in rules}
    assert len(found) == len(rules)
    assert all(grant.resource.startswith("alerts.") for grant in found)


@pytest.mark.parametrize(("params", "principal"), [({}, SYSTEM_PRINCIPAL), (USER_ASSIGNED, USER_PRINCIPAL)])
def test_the_graph_script_is_pointed_at_the_identity_that_holds_the_rotation_role(
    params: dict[str, str], principal: Any
) -> None:
    # grant-graph-permission.sh takes AZURE_APP_PRINCIPAL_ID: Graph's rights must land where Key Vault's do.
    main = deployment(INFRA, {**params, **GRANT})
    output = main.evaluator.value(main.file.outputs["AZURE_APP_PRINCIPAL_ID"]["value"])
    assert output == principal
    rotating = {g.principal for g in grants(INFRA, {**params, **GRANT}) if g.role == SECRETS_OFFICER}
    assert rotating == {principal}


@dataclass(frozen=True)
class Plant:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]  # each is in one of the problems named, in order
    count: int = 1  # how many problems the one mistake makes
    params: tuple[tuple[str, Any], ...] = tuple(USER_ASSIGNED.items())


USER_ROLES_MODULE = "module userAssignedRoles 'modules/roles.bicep' = if (useUserAssigned) {"
ROTATING_SECRET = {**USER_ASSIGNED, **GRANT}
SECRET_SCOPE = "vault/secrets/dataverse-client-secret"
PLANTS = [
    Plant("roles for the system identity only", "main.bicep",
          ((USER_ROLES_MODULE, "module userAssignedRoles 'modules/roles.bicep' = if (false) {"),),
          (f"{USER_PRINCIPAL!r} lacks ['keyVaultReaderRoleId on vault', 'keyVaultSecretsUserRoleId on vault', "
           "'monitoringMetricsPublisherRoleId on appInsights', 'storageBlobDataOwnerRoleId on storage', "
           "'storageQueueDataContributorRoleId on storage', 'storageTableDataContributorRoleId on storage']",)),
    Plant("the user-assigned roles given to the system identity", "main.bicep",
          (("    principalId: userAssignedIdentityPrincipalId\n", "    principalId: app.outputs.principalId\n"),),
          (f"{USER_PRINCIPAL!r} lacks",), count=1 + len(ALWAYS)),  # and each name twice
    Plant("assignment names without the principal", "modules/roles.bicep",
          (("guid(storage.id, principalId, storageBlobDataOwnerRoleId)",
            "guid(storage.id, storageBlobDataOwnerRoleId)"),),
          ("2 role assignments share the name guid(storage.id, 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')",)),
    Plant("the package read with the system identity", "modules/functionapp.bicep",
          (("type: 'UserAssignedIdentity'", "type: 'SystemAssignedIdentity'"),),
          ("deployment storage authentication is {'type': 'SystemAssignedIdentity', "
           "'userAssignedIdentityResourceId'",)),
    Plant("storage without the user-assigned client id", "main.bicep",
          (("    name: 'AzureWebJobsStorage__clientId'\n    value: userAssignedIdentityClientId\n  }\n", ""),
           ("    value: 'managedidentity'\n  }\n  {\n", "    value: 'managedidentity'\n  }\n")),
          ("app setting AzureWebJobsStorage__clientId is None, not '00000000-0000-0000-0000-0000000000a1'",)),
    Plant("Secrets Officer on the whole vault", "modules/roles.bicep",
          (("  scope: dataverseSecret\n", "  scope: vault\n"),),
          (f"{USER_PRINCIPAL!r} lacks ['keyVaultSecretsOfficerRoleId on {SECRET_SCOPE}']",
           f"{USER_PRINCIPAL!r} should not hold ['keyVaultSecretsOfficerRoleId on vault']"),
          count=2, params=tuple(ROTATING_SECRET.items())),
    Plant("Secrets Officer without a scope (the resource group)", "modules/roles.bicep",
          (("  scope: dataverseSecret\n", ""),),
          (f"{USER_PRINCIPAL!r} lacks ['keyVaultSecretsOfficerRoleId on {SECRET_SCOPE}']",
           f"{USER_PRINCIPAL!r} should not hold ['keyVaultSecretsOfficerRoleId on {RESOURCE_GROUP}']"),
          count=2, params=tuple(ROTATING_SECRET.items())),
    Plant("Secrets Officer on another secret than the app's", "main.bicep",
          (("useCertificate ? dataverseCertificateName : dataverseClientSecretName",
            "useCertificate ? dataverseCertificateName : 'teams-webhook-url'"),),
          (f"{USER_PRINCIPAL!r} lacks ['keyVaultSecretsOfficerRoleId on {SECRET_SCOPE}']",
           f"{USER_PRINCIPAL!r} should not hold ['keyVaultSecretsOfficerRoleId on vault/secrets/teams-webhook-url']"),
          count=2, params=tuple(ROTATING_SECRET.items())),
    Plant("rotation's role to the identity that does not rotate as well", "main.bicep",
          (("    grantRotationAccess: grantRotationAccess && !useUserAssigned\n",
            "    grantRotationAccess: grantRotationAccess\n"),),
          (f"app.outputs.principalId should not hold ['keyVaultSecretsOfficerRoleId on {SECRET_SCOPE}']",),
          params=tuple(ROTATING_SECRET.items())),
    Plant("Certificate User on the whole vault", "modules/roles.bicep",
          (("  scope: dataverseCertificate\n", "  scope: vault\n"),),
          (f"{USER_PRINCIPAL!r} lacks ['keyVaultCertificateUserRoleId on vault/certificates/dataverse-cert']",
           f"{USER_PRINCIPAL!r} should not hold ['keyVaultCertificateUserRoleId on vault']"),
          count=2, params=tuple({**ROTATING_SECRET, **CERTIFICATE}.items())),
    Plant("an alert rule's Reader on the resource group", "modules/alerts.bicep",
          (("name: guid(appInsights.id, poisonMessages.id, readerRoleId)\n  scope: appInsights\n",
            "name: guid(appInsights.id, poisonMessages.id, readerRoleId)\n"),),
          ("poisonMessages.identity.principalId lacks ['readerRoleId on appInsights']",
           f"poisonMessages.identity.principalId should not hold ['readerRoleId on {RESOURCE_GROUP}']"),
          count=2),
    Plant("an alert rule's Reader given to another rule", "modules/alerts.bicep",
          (("principalId: webhookLag.identity.principalId", "principalId: deadLetters.identity.principalId"),),
          ("webhookLag.identity.principalId lacks ['readerRoleId on appInsights']",)),
]  # fmt: skip


@pytest.mark.parametrize("plant", PLANTS, ids=[plant.id for plant in PLANTS])
def test_a_planted_identity_mistake_is_named(tmp_path: Path, plant: Plant) -> None:
    copy = planted_copy(tmp_path, plant.file, plant.edits)
    problems = identity_problems(copy, dict(plant.params))
    assert len(problems) == plant.count, problems
    for expected, problem in zip(plant.problems, problems, strict=False):
        assert expected in problem, problems
    rest = problems[len(plant.problems) :]  # a mistake that makes more problems than named: the names it shares
    assert all("role assignments share the name" in problem for problem in rest), problems
