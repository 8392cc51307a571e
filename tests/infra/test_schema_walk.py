"""The schema walk (tests/infra/schema_walk.py) finds nothing in infra/, and finds each planted mistake.

Each planted case copies infra/ to a temporary directory, makes one mistake in one file, and expects exactly
one finding: in that file, on that resource or module, at that path, with a message that says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.devstack_process import ROOT
from tests.infra.planting import planted_copy
from tests.infra.schema_walk import MODELS, Finding, Kind, Shape, model_fields, walk

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"


@dataclass(frozen=True)
class Plant:
    """One mistake: ``edits`` (old text -> new text, each found exactly once) in ``file``, and the finding."""

    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    resource: str
    path: str
    message: str


PLANTS = [
    Plant("misspelt property", "modules/functionapp.bicep",
          (("minTlsVersion: '1.2'", "minTlsVersoin: '1.2'"),),
          "site", "properties.siteConfig.minTlsVersoin",
          "unknown property 'minTlsVersoin' in SiteConfig (did you mean 'minTlsVersion'?)"),
    Plant("misnested property", "modules/functionapp.bicep",
          (("    httpsOnly: true\n", ""),
           ("      ftpsState: 'Disabled'\n", "      ftpsState: 'Disabled'\n      httpsOnly: true\n")),
          "site", "properties.siteConfig.httpsOnly",
          "unknown property 'httpsOnly' in SiteConfig (the model has it at properties.httpsOnly)"),
    Plant("string literal where the model wants a bool", "modules/keyvault.bicep",
          (("enableRbacAuthorization: true", "enableRbacAuthorization: 'true'"),),
          "vault", "properties.enableRbacAuthorization", "expects bool, got string 'true'"),
    Plant("string param where the model wants an int", "modules/keyvault.bicep",
          (("param tenantId string\n", "param tenantId string\nparam retentionDays string = '90'\n"),
           ("softDeleteRetentionInDays: 90", "softDeleteRetentionInDays: retentionDays")),
          "vault", "properties.softDeleteRetentionInDays",
          "expects int, got string (param retentionDays)"),
    Plant("unknown enum value", "modules/storage.bicep",
          (("name: 'Standard_ZRS'", "name: 'Standard_ZRSS'"),),
          "storage", "sku.name",
          "'Standard_ZRSS' is not a known SkuName value (did you mean 'Standard_ZRS'?)"),
    Plant("unknown enum value in one branch of a ternary", "modules/functionapp.bicep",
          (("'SystemAssigned, UserAssigned'", "'SystemAssigned,UserAssigned'"),),
          "site", "identity.type",
          "'SystemAssigned,UserAssigned' is not a known ManagedServiceIdentityType value"),
    Plant("missing required property", "modules/keyvault.bicep",
          (("    tenantId: tenantId\n", ""),),
          "vault", "properties.tenantId", "missing required property 'tenantId' of VaultProperties"),
    Plant("unknown resource type", "modules/monitoring.bicep",
          (("OperationalInsights/workspaces@", "OperationalInsights/workspace@"),),
          "workspace", "type",
          "no SDK model is mapped for resource type Microsoft.OperationalInsights/workspace"),
    Plant("API version with no model", "modules/keyvault.bicep",
          (("vaults@2023-07-01'", "vaults@2023-08-01'"),),
          "vault", "apiVersion",
          "no SDK model is mapped for Microsoft.KeyVault/vaults@2023-08-01 (mapped versions: 2023-07-01)"),
    Plant("existing resource at an API version with no model", "modules/roles.bicep",
          (("components@2020-02-02' existing", "components@2015-05-01' existing"),),
          "appInsights", "apiVersion",
          "no SDK model is mapped for Microsoft.Insights/components@2015-05-01"),
    Plant("module output the module does not declare", "main.bicep",
          (("storage.outputs.blobEndpoint", "storage.outputs.blobEndpoints"),),
          "storage", "outputs.blobEndpoints",
          "module storage (modules/storage.bicep) declares no output 'blobEndpoints' (did you mean 'blobEndpoint'?)"),
    Plant("read of a property the model lacks", "modules/monitoring.bicep",
          (("appInsights.properties.ConnectionString", "appInsights.properties.connectionString"),),
          "appInsights", "properties.connectionString",
          "reads unknown property 'connectionString' of ApplicationInsightsComponent.properties"
          " (did you mean 'ConnectionString'?) (in output connectionString)"),
    Plant("property of another polymorphic destination", "modules/eventgrid.bicep",
          (("        resourceId: ", "        endpointUrl: "),),
          "expiry", "properties.destination.properties.endpointUrl",
          "unknown property 'endpointUrl' in AzureFunctionEventSubscriptionDestination.properties"
          " (it is a property of endpointType 'WebHook')"),
    Plant("unknown polymorphic discriminator", "modules/eventgrid.bicep",
          (("endpointType: 'AzureFunction'", "endpointType: 'AzureFunctions'"),),
          "expiry", "properties.destination.endpointType",
          "unknown endpointType 'AzureFunctions' for EventSubscriptionDestination (did you mean 'AzureFunction'?)"),
    Plant("read-only property written", "modules/storage.bicep",
          (("    publicAccess: 'None'\n", "    publicAccess: 'None'\n    leaseState: 'Available'\n"),),
          "container", "properties.leaseState", "'leaseState' is read-only in BlobContainer.properties"),
    Plant("literal beyond the model's length limit, in a conditional resource", "modules/alerts.bicep",
          (("groupShortName: 'dvbridge'", "groupShortName: 'dvbridge-alerts'"),),
          "actionGroup", "properties.groupShortName", "'dvbridge-alerts' breaks the model's max_length 12"),
    Plant("misspelt property of an array item", "modules/alerts.bicep",
          (("useCommonAlertSchema: true", "useCommonAlertSchemas: true"),),
          "actionGroup", "properties.emailReceivers[0].useCommonAlertSchemas",
          "unknown property 'useCommonAlertSchemas' in EmailReceiver (did you mean 'useCommonAlertSchema'?)"),
    Plant("misspelt property of a scheduled query rule's condition", "modules/alerts.bicep",
          (("metricMeasureColumn: 'lagSeconds'", "metricMeasureColum: 'lagSeconds'"),),
          "webhookLag", "properties.criteria.allOf[0].metricMeasureColum",
          "unknown property 'metricMeasureColum' in Condition (did you mean 'metricMeasureColumn'?)"),
    Plant("unknown aggregation of a scheduled query rule", "modules/alerts.bicep",
          (("timeAggregation: 'Minimum'", "timeAggregation: 'Min'"),),
          "credentialExpiring", "properties.criteria.allOf[0].timeAggregation",
          "'Min' is not a known TimeAggregation value"),
    Plant("a rule's autoMitigate misnested in its criteria", "modules/alerts.bicep",
          (("threshold: throttledPer15Min\n", "threshold: throttledPer15Min\n          autoMitigate: true\n"),),
          "throttled", "properties.criteria.allOf[0].autoMitigate",
          "unknown property 'autoMitigate' in Condition (the model has it at properties.autoMitigate)"),
    Plant("read of a rule identity's property the model lacks", "modules/alerts.bicep",
          (("principalId: poisonMessages.identity.principalId", "principalId: poisonMessages.identity.principalID"),),
          "poisonMessages", "identity.principalID",
          "reads unknown property 'principalID' of Identity (did you mean 'principalId'?)"
          " (in resource poisonMessagesReader)"),
    Plant("a scheduled query rule at an API version with no model", "modules/alerts.bicep",
          (("scheduledQueryRules@2023-03-15-preview' = {\n  name: 'alert-poison-queue",
            "scheduledQueryRules@2023-12-01' = {\n  name: 'alert-poison-queue"),),
          "poisonMessages", "apiVersion",
          "no SDK model is mapped for Microsoft.Insights/scheduledQueryRules@2023-12-01"
          " (mapped versions: 2023-03-15-preview)"),
    Plant("a workbook without kind 'shared' (the model does not require it)", "modules/monitoring.bicep",
          (("  kind: 'shared'\n", ""),),
          "workbook", "kind", "missing property 'kind', which Microsoft.Insights/workbooks needs: 'shared'"),
    Plant("a workbook without the category its spec requires", "modules/monitoring.bicep",
          (("    category: 'workbook'\n", ""),),
          "workbook", "properties.category",
          "missing property 'category', which Microsoft.Insights/workbooks needs: required by the REST spec"),
    Plant("module param the module does not declare", "main.bicep",
          (("    instanceMemoryMB: instanceMemoryMB\n",
           "    instanceMemoryMB: instanceMemoryMB\n    maxInstances: 9\n"),),
          "app", "params.maxInstances", "module app (modules/functionapp.bicep) has no param 'maxInstances'"),
    Plant("a certificate created as if ARM had the type", "modules/roles.bicep",
          (("certificates@2023-07-01' existing = {", "certificates@2023-07-01' = {"),),
          "dataverseCertificate", "existing",
          "Microsoft.KeyVault/vaults/certificates is a Key Vault certificate (a data-plane object): ARM has no"
          " resource type to create it; declare it `existing`, as a role assignment's scope"),
    Plant("read of a scope-only object's properties", "modules/roles.bicep",
          (("resource dataverseCertificate ",
            "output certificateSecret string = dataverseCertificate.properties.sid\n"
            "\nresource dataverseCertificate "),),
          "dataverseCertificate", "properties",
          "reads 'properties' of a Key Vault certificate (a data-plane object), which ARM cannot read; only id, name"
          " (in output certificateSecret)"),
    Plant("misspelt read of the secret a role is scoped to", "modules/roles.bicep",
          (("guid(dataverseSecret.id, ", "guid(dataverseSecret.properties.secretUrl, "),),
          "dataverseSecret", "properties.secretUrl",
          "reads unknown property 'secretUrl' of SecretProperties (did you mean 'secretUri'?)"),
]  # fmt: skip


def planted(tmp_path: Path, plant: Plant) -> Path:
    return planted_copy(tmp_path, plant.file, plant.edits)


def test_the_shipped_templates_match_the_models() -> None:
    findings = walk(INFRA)
    assert findings == [], "\n".join(map(str, findings))


def test_every_resource_declaration_is_walked() -> None:
    # The walk is silent on the shipped templates: it must be because they fit, not because it saw nothing.
    text = "".join(path.read_text() for path in INFRA.rglob("*.bicep"))
    assert text.count("\nresource ") >= len({"site", "plan", "storage", "vault", "blobOwner", "topic"})
    for (resource_type, version), ref in MODELS.items():
        assert model_fields(ref.write_model(), ()), f"{resource_type}@{version}: {ref.write} has no properties"
        assert model_fields(ref.read_model(), ()), f"{resource_type}@{version}: {ref.read} has no properties"


def test_flattened_properties_are_nested_as_bicep_writes_them() -> None:
    site = MODELS[("microsoft.web/sites", "2024-04-01")].write_model()
    top = model_fields(site, ())
    assert top["properties"].shape.prefix == ("properties",)
    nested = model_fields(site, ("properties",))
    assert nested["siteConfig"].shape.models[0].__name__ == "SiteConfig"
    assert nested["httpsOnly"].shape == Shape(Kind.BOOL)
    assert nested["defaultHostName"].readonly
    assert "siteConfig" not in top


@pytest.mark.parametrize("plant", PLANTS, ids=[plant.id for plant in PLANTS])
def test_a_planted_mistake_is_reported_with_file_resource_and_path(tmp_path: Path, plant: Plant) -> None:
    findings = walk(planted(tmp_path, plant))
    shown = "\n".join(map(str, findings))
    assert [(f.file, f.resource, f.path) for f in findings] == [(plant.file, plant.resource, plant.path)], shown
    assert plant.message in findings[0].message


def test_the_plants_are_different_mistakes() -> None:
    assert len(PLANTS) >= 10
    assert len({plant.id for plant in PLANTS}) == len(PLANTS)
    assert len({(plant.file, plant.path) for plant in PLANTS}) == len(PLANTS)


def test_a_finding_names_its_place() -> None:
    finding = Finding("main.bicep", "app", "params.x", "module app has no param 'x'", line=7)
    assert str(finding) == "main.bicep:7: app params.x: module app has no param 'x'"
