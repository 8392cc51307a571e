"""Offline contract tests for infra/: the invariants a deployment must keep, read from the parsed Bicep
(pycep-parser), plus checkov with the repository's .checkov.yaml. No Bicep compiler is available here, so
these catch the mistakes people make (keys, access policies, wrong role GUIDs, no identity), not typos in
property names; DEPLOY.md says to run `az bicep build` where it exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from shared.settings_registry import SETTINGS, Deploy, setting
from shared.sync.jobs_file import schedule_setting
from tests.devstack_process import ROOT

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
EXPECTED_ROLES = {  # variable in modules/roles.bicep -> built-in role GUID
    "storageBlobDataOwnerRoleId": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageQueueDataContributorRoleId": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributorRoleId": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "keyVaultSecretsUserRoleId": "4633458b-17de-408a-b874-0445c86b69e6",
    "keyVaultReaderRoleId": "21090545-7ca7-4776-b22c-e363652d74d2",
    "keyVaultCertificateUserRoleId": "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
    "keyVaultSecretsOfficerRoleId": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "monitoringMetricsPublisherRoleId": "3913510d-42f4-4e42-8a64-420c390055eb",
}
ALERT_RULE_ROLES = {  # variable in modules/alerts.bicep -> built-in role GUID: each alert rule's identity reads
    "readerRoleId": "acdd72a7-3385-48ef-bd42-f606fba81ae7",  # Application Insights with it, nothing else
}
KEY_VAULT_EVENTS = {  # the four expiry events, and a certificate's renewal (it starts the certificate's rotation)
    "Microsoft.KeyVault.SecretNearExpiry", "Microsoft.KeyVault.SecretExpired",
    "Microsoft.KeyVault.CertificateNearExpiry", "Microsoft.KeyVault.CertificateExpired",
    "Microsoft.KeyVault.CertificateNewVersionCreated",
}  # fmt: skip


@cache
def parsed(path: Path) -> dict[str, Any]:
    return dict(BicepParser().parse(file_path=path))


def module(name: str) -> dict[str, Any]:
    return parsed(INFRA / "modules" / f"{name}.bicep")


def resource(module_name: str, symbol: str) -> dict[str, Any]:
    return dict(module(module_name)["resources"][symbol]["config"])


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def app_settings() -> set[str]:
    """Every app setting name main.bicep gives the function app (``{name, value}`` objects)."""
    return {
        str(node["name"]) for node in walk(parsed(INFRA / "main.bicep"))
        if isinstance(node, dict) and set(node) == {"name", "value"} and isinstance(node["name"], str)
    }  # fmt: skip


@pytest.mark.parametrize("path", BICEP_FILES, ids=[str(p.relative_to(INFRA)) for p in BICEP_FILES])
def test_every_bicep_file_parses(path: Path) -> None:
    assert {"resources"} <= set(parsed(path)) or "modules" in parsed(path), path


def test_key_vault_uses_rbac_with_soft_delete_and_purge_protection() -> None:
    props = resource("keyvault", "vault")["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["softDeleteRetentionInDays"] >= 7
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props  # access policies are what RBAC replaces


def test_storage_refuses_shared_keys_and_plain_http() -> None:
    props = resource("storage", "storage")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_no_storage_key_or_connection_string_anywhere() -> None:
    for path in [*BICEP_FILES, INFRA / "main.parameters.json"]:
        text = path.read_text()
        assert "AccountKey=" not in text, path
        assert "listKeys(" not in text, path
    settings = app_settings()
    assert "AzureWebJobsStorage__accountName" in settings
    assert "AzureWebJobsStorage" not in settings  # a connection string would need a key


def test_function_app_is_flex_python_313_with_identity_https_tls12_and_no_ftp() -> None:
    plan = resource("functionapp", "plan")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resource("functionapp", "site")
    assert "SystemAssigned" in json.dumps(site["identity"]["type"])
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.13"}
    assert config["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    # Flex refuses fewer than 40 instances in most regions: the cap is a parameter, not derived from the
    # Dataverse budget (the instances share that through storage, test_flex_rules.py checks the values).
    assert "maximumInstanceCount" in parsed(INFRA / "main.bicep")["parameters"]
    assert "maximumInstanceCount" not in parsed(INFRA / "main.bicep").get("variables", {})


def test_role_assignments_use_the_right_built_in_roles_on_the_right_scopes() -> None:
    roles = module("roles")
    values = {name: roles["variables"][name]["value"] for name in EXPECTED_ROLES}
    assert values == EXPECTED_ROLES
    scopes = {}
    for symbol, res in roles["resources"].items():
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        config = res["config"].get("config", res["config"])  # a conditional resource nests its body
        role_var = config["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        scopes[role_var] = config["scope"]
        assert config["properties"]["principalType"] == "ServicePrincipal", symbol
    assert scopes == {
        "storageBlobDataOwnerRoleId": "storage", "storageQueueDataContributorRoleId": "storage",
        "storageTableDataContributorRoleId": "storage", "keyVaultSecretsUserRoleId": "vault",
        "keyVaultReaderRoleId": "vault", "keyVaultCertificateUserRoleId": "dataverseCertificate",
        "keyVaultSecretsOfficerRoleId": "dataverseSecret", "monitoringMetricsPublisherRoleId": "appInsights",
    }  # fmt: skip


def test_rotation_roles_are_scoped_to_the_credential_object_in_the_vault() -> None:
    # The scopes above are these two: the one secret or certificate named like the app's credential setting,
    # a child of the vault (tests/infra/test_identities.py checks the evaluated names and who holds them).
    roles = parsed(INFRA / "modules" / "roles.bicep")
    for symbol, kind in (("dataverseSecret", "secrets"), ("dataverseCertificate", "certificates")):
        declaration = roles["resources"][symbol]
        assert declaration["type"] == f"Microsoft.KeyVault/vaults/{kind}", symbol
        assert declaration.get("existing"), f"{symbol}: the template must not create or overwrite the credential"
        assert declaration["config"] == {"parent": "vault", "name": "credentialName"}, symbol
    main = parsed(INFRA / "main.bicep")
    assert main["parameters"]["grantRotationAccess"]["default"] is False  # the credential is stored after deploy


def test_telemetry_has_local_auth_disabled() -> None:
    assert resource("monitoring", "appInsights")["properties"]["DisableLocalAuth"] is True
    assert resource("monitoring", "workspace")["properties"]["features"]["disableLocalAuth"] is True
    assert "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in app_settings()


def test_event_grid_subscribes_the_expiry_events_and_certificate_renewals_to_the_expiry_function() -> None:
    topic = resource("eventgrid", "topic")["properties"]
    assert topic["topicType"] == "Microsoft.KeyVault.vaults"
    subscription = resource("eventgrid", "expiry")["properties"]
    assert set(subscription["filter"]["includedEventTypes"]) == KEY_VAULT_EVENTS
    assert len(subscription["filter"]["includedEventTypes"]) == len(KEY_VAULT_EVENTS)
    destination = subscription["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert json.dumps(destination["properties"]["resourceId"]).endswith('/functions/expiry_event"')
    hook = (ROOT / "azure.yaml").read_text() + (INFRA / "scripts" / "postdeploy.sh").read_text()
    assert "postdeploy" in hook
    assert "modules/eventgrid.bicep" in hook  # created after the code exists


def settings_the_app_reads() -> set[str]:
    """Every setting the registry declares; a job's schedule setting once per job of the jobs file."""
    names = {item.name for item in SETTINGS if not item.pattern}
    names |= {schedule_setting(job) for job in yaml.safe_load((ROOT / "sync_jobs.yaml").read_text())["jobs"]}
    return names


def how_azure_gets(name: str) -> Deploy:
    return setting(name).deploy


def test_every_setting_the_app_reads_is_set_by_main_bicep_or_documented_as_optional() -> None:
    documented = set(re.findall(r"^\| `([A-Za-z0-9_<>]+)` \|", (ROOT / "DEPLOY.md").read_text(), re.MULTILINE))
    local_only = {name for name in settings_the_app_reads() if how_azure_gets(name) is Deploy.LOCAL}
    set_by_bicep = app_settings() | local_only  # AzureWebJobsStorage: identity-based __accountName in Azure
    missing = sorted(settings_the_app_reads() - set_by_bicep - documented)
    assert missing == [], f"set these in main.bicep or list them in DEPLOY.md's optional settings: {missing}"
    assert {"DATAVERSE_URL", "DATAVERSE_TENANT_ID", "DATAVERSE_CLIENT_ID", "KEY_VAULT_URL"} <= set_by_bicep


def test_the_registry_says_how_main_bicep_gets_each_setting() -> None:
    bicep = app_settings()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_<>]+)` \|", (ROOT / "DEPLOY.md").read_text(), re.MULTILINE))
    wrong = {}
    for name in sorted(settings_the_app_reads()):
        deploy = how_azure_gets(name)
        if deploy in (Deploy.TEMPLATE, Deploy.TEMPLATE_WHEN) and name not in bicep:
            wrong[name] = f"declared '{deploy}' but main.bicep does not set it"
        elif deploy in (Deploy.OPTIONAL, Deploy.LOCAL) and name in bicep:
            wrong[name] = f"declared '{deploy}' but main.bicep sets it"
        elif deploy is Deploy.OPTIONAL and name not in documented:
            wrong[name] = "optional but not in DEPLOY.md's table (python -m shared.settings_docs --write)"
    assert wrong == {}, "correct shared/settings_registry.py or main.bicep"
    undeclared = sorted(bicep - settings_the_app_reads())
    assert undeclared == [], f"main.bicep sets settings the registry does not declare: {undeclared}"


def test_the_setting_comparison_can_fail() -> None:
    assert "SECRET_CACHE_TTL_S" in settings_the_app_reads()
    assert "SECRET_CACHE_TTL_S" not in app_settings()  # so only DEPLOY.md's table lets the test above pass
    assert how_azure_gets("SYNC_SCHEDULE_ACCOUNTS") is Deploy.TEMPLATE
    assert "SYNC_SCHEDULE_ACCOUNTS" in app_settings()  # a pattern setting is checked per job


# -- checkov ----------------------------------------------------------------------------------------------
def checkov(directory: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), "checkov is not installed: run `make test` (it creates .venv-checkov)"
    completed = subprocess.run(
        [str(CHECKOV), "--config-file", str(ROOT / ".checkov.yaml"), "-d", str(directory), "-o", "json", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    report = json.loads(completed.stdout)
    return dict(report[0] if isinstance(report, list) else report)


def test_checkov_finds_nothing_unexplained_and_parses_everything() -> None:
    report = checkov(INFRA)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0  # checkov exits 0 on parse errors: its JSON is what counts
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert summary["passed"] >= 20
    assert summary["resource_count"] >= 20


def test_a_parse_error_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "infra"
    shutil.copytree(INFRA, broken)
    (broken / "modules" / "keyvault.bicep").write_text("resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {\n")
    assert checkov(broken)["summary"]["parsing_errors"] == 1


def test_every_checkov_skip_states_its_reason() -> None:
    lines = [line for line in (ROOT / ".checkov.yaml").read_text().splitlines() if line.strip().startswith("- CKV")]
    assert lines
    for line in lines:
        _, _, reason = line.partition("#")
        assert len(reason.strip()) > 20, f"a skip without a reason: {line.strip()}"
