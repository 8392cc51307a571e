"""Flex Consumption rules (tests/infra/flex_rules.py) hold for infra/ as shipped, and each planted break is
reported on its own, with file, resource and path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.devstack_process import ROOT
from tests.infra.bicep_eval import instantiate
from tests.infra.flex_rules import (
    FLEX_INSTANCE_MEMORY_MB,
    FLEX_MIN_INSTANCES,
    FLEX_RUNTIME,
    REQUIRED_PARAMS,
    SITES,
    flex_findings,
)
from tests.infra.planting import planted_copy

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
USER_ASSIGNED = {
    "userAssignedIdentityId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity"
    "/userAssignedIdentities/id-dvbridge",
    "userAssignedIdentityClientId": "00000000-0000-0000-0000-0000000000a1",
    "userAssignedIdentityPrincipalId": "00000000-0000-0000-0000-0000000000b1",
}
SCENARIOS = {
    "defaults": {},
    "user-assigned identity": USER_ASSIGNED,
    "certificate": {"dataverseCertificateName": "dataverse-cert"},
    "alerts": {"alertEmail": "ops@example.com"},
}
SCALE = "properties.functionAppConfig.scaleAndConcurrency"


@dataclass(frozen=True)
class Plant:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    finding_file: str
    resource: str
    path: str
    message: str


PLANTS = [
    Plant("instance count default below Flex's least", "main.bicep",
          (("param maximumInstanceCount int = 100", "param maximumInstanceCount int = 20"),),
          "modules/functionapp.bicep", "site", f"{SCALE}.maximumInstanceCount",
          "is 20 with the default parameters; Flex Consumption accepts 40 to 1000"),
    Plant("instance count param allowed below Flex's least", "main.bicep",
          (("@minValue(40)", "@minValue(1)"),),
          "main.bicep", "param maximumInstanceCount", "@minValue",
          "lets maximumInstanceCount go down to 1: give it @minValue(40)"),
    Plant("instance count param without a lower bound", "main.bicep",
          (("@minValue(40)\n", ""),),
          "main.bicep", "param maximumInstanceCount", "@minValue",
          "lets maximumInstanceCount go down to any value"),
    Plant("literal instance count passed to the module", "main.bicep",
          (("    maximumInstanceCount: maximumInstanceCount\n", "    maximumInstanceCount: 10\n"),),
          "modules/functionapp.bicep", "site", f"{SCALE}.maximumInstanceCount", "is 10 with the default parameters"),
    Plant("instance memory Flex does not offer in @allowed", "main.bicep",
          (("  512\n  2048\n", "  512\n  1024\n  2048\n"),),
          "main.bicep", "param instanceMemoryMB", "@allowed",
          "has @allowed values [1024] for instanceMemoryMB; Flex Consumption offers 512, 2048, 4096"),
    Plant("instance memory Flex does not offer, written in the module", "modules/functionapp.bicep",
          (("instanceMemoryMB: instanceMemoryMB", "instanceMemoryMB: 1536"),),
          "modules/functionapp.bicep", "site", f"{SCALE}.instanceMemoryMB", "is 1536; Flex Consumption offers"),
    Plant("another Python version", "modules/functionapp.bicep",
          (("version: '3.13'", "version: '3.11'"),),
          "modules/functionapp.bicep", "site", "properties.functionAppConfig.runtime",
          "is {\"name\": \"python\", \"version\": \"3.11\"}, not {\"name\": \"python\", \"version\": \"3.13\"}"),
    Plant("another runtime", "modules/functionapp.bicep",
          (("name: 'python'", "name: 'node'"),),
          "modules/functionapp.bicep", "site", "properties.functionAppConfig.runtime", "\"name\": \"node\""),
    Plant("FUNCTIONS_WORKER_RUNTIME as an app setting", "main.bicep",
          (("      {\n        name: 'DATAVERSE_URL'",
            "      {\n        name: 'FUNCTIONS_WORKER_RUNTIME'\n        value: 'python'\n      }\n"
            "      {\n        name: 'DATAVERSE_URL'"),),
          "main.bicep", "app", "appSettings['FUNCTIONS_WORKER_RUNTIME']",
          "app setting FUNCTIONS_WORKER_RUNTIME is refused on Flex Consumption (in module app)"),
    Plant("WEBSITE_CONTENTSHARE in the user-assigned branch only", "main.bicep",
          (("    name: 'AzureWebJobsStorage__credential'",
            "    name: 'WEBSITE_CONTENTSHARE'\n    value: 'share'\n  }\n"
            "  {\n    name: 'AzureWebJobsStorage__credential'"),),
          "main.bicep", "identitySettings", "appSettings['WEBSITE_CONTENTSHARE']",
          "app setting WEBSITE_CONTENTSHARE is refused on Flex Consumption (in var identitySettings)"),
    Plant("WEBSITE_RUN_FROM_PACKAGE named through a variable", "main.bicep",
          (("var keyVaultName = ", "var packageSetting = 'WEBSITE_RUN_FROM_PACKAGE'\nvar keyVaultName = "),
           ("    name: 'DATAVERSE_CERTIFICATE_NAME'",
            "    name: packageSetting\n    value: '1'\n  }\n  {\n    name: 'DATAVERSE_CERTIFICATE_NAME'")),
          "main.bicep", "credentialSetting", "appSettings['WEBSITE_RUN_FROM_PACKAGE']",
          "app setting WEBSITE_RUN_FROM_PACKAGE is refused on Flex Consumption"),
    Plant("linuxFxVersion in siteConfig", "modules/functionapp.bicep",
          (("      ftpsState: 'Disabled'\n", "      ftpsState: 'Disabled'\n      linuxFxVersion: 'PYTHON|3.13'\n"),),
          "modules/functionapp.bicep", "site", "properties.siteConfig.linuxFxVersion",
          "'linuxFxVersion' is refused on Flex Consumption: functionAppConfig replaces it"),
    Plant("a siteConfig scale property", "modules/functionapp.bicep",
          (("      ftpsState: 'Disabled'\n", "      ftpsState: 'Disabled'\n      functionAppScaleLimit: 10\n"),),
          "modules/functionapp.bicep", "site", "properties.siteConfig.functionAppScaleLimit",
          "'functionAppScaleLimit' is refused on Flex Consumption"),
]  # fmt: skip


def planted(tmp_path: Path, plant: Plant) -> Path:
    return planted_copy(tmp_path, plant.file, plant.edits)


@pytest.mark.parametrize("params", SCENARIOS.values(), ids=list(SCENARIOS))
def test_the_shipped_templates_keep_the_flex_rules(params: dict[str, str]) -> None:
    findings = flex_findings(INFRA, params)
    assert findings == [], "\n".join(map(str, findings))


def test_the_default_scale_and_runtime_are_what_flex_accepts() -> None:
    app = next(child for child in instantiate(INFRA, REQUIRED_PARAMS).walk() if child.symbol == "app")
    [(_, site)] = list(app.resources(SITES))
    config = site["properties"]["functionAppConfig"]
    assert config["scaleAndConcurrency"]["maximumInstanceCount"] >= FLEX_MIN_INSTANCES
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] in FLEX_INSTANCE_MEMORY_MB
    assert config["runtime"] == FLEX_RUNTIME
    # the Dataverse budget is shared by all instances through storage, set by its own parameter
    settings = {item["name"]: item["value"] for item in site["properties"]["siteConfig"]["appSettings"]}
    assert settings["DATAVERSE_CONCURRENCY_BUDGET"] == "48"


@pytest.mark.parametrize("plant", PLANTS, ids=[plant.id for plant in PLANTS])
def test_a_planted_flex_break_is_reported_with_file_resource_and_path(tmp_path: Path, plant: Plant) -> None:
    findings = flex_findings(planted(tmp_path, plant))
    shown = "\n".join(map(str, findings))
    assert [(f.file, f.resource, f.path) for f in findings] == [(plant.finding_file, plant.resource, plant.path)], shown
    assert plant.message in findings[0].message


def test_the_plants_are_different_breaks() -> None:
    assert len({plant.id for plant in PLANTS}) == len(PLANTS)
    assert len({(plant.finding_file, plant.resource, plant.path, plant.message) for plant in PLANTS}) == len(PLANTS)
