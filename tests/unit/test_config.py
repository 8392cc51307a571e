"""Settings.from_env: every problem in one ConfigError, each naming the setting and a good value."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError

pytestmark = pytest.mark.unit

GOOD = {
    "DATAVERSE_URL": "https://contoso.crm4.dynamics.com/",
    "DATAVERSE_TENANT_ID": "5F0C3A2E-7D1B-4C8E-9A61-2B7E4D9F1C01",
    "DATAVERSE_CLIENT_ID": "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11",
    "DATAVERSE_CLIENT_SECRET_NAME": "dataverse-client-secret",
    "KEY_VAULT_URL": "https://contoso-dvbridge.vault.azure.net/",
}


def test_good_settings_are_normalised() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.dataverse_url == "https://contoso.crm4.dynamics.com"
    assert settings.dataverse_scope == "https://contoso.crm4.dynamics.com/.default"
    assert settings.tenant_id == "5f0c3a2e-7d1b-4c8e-9a61-2b7e4d9f1c01"
    assert settings.authority == "https://login.microsoftonline.com/5f0c3a2e-7d1b-4c8e-9a61-2b7e4d9f1c01"
    assert settings.instance_discovery
    assert settings.verify_challenge_resource
    assert settings.secret_cache_ttl_s == 900
    assert settings.token_refresh_margin_s == 300


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "DATAVERSE_URL": "http://contoso.crm.dynamics.com/api/data/v9.2",
        "DATAVERSE_TENANT_ID": "common",
        "DATAVERSE_CLIENT_ID": "not-a-guid",
        "KEY_VAULT_URL": "",
        "ENTRA_INSTANCE_DISCOVERY": "maybe",
        "SECRET_CACHE_TTL_S": "ten",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    problems = caught.value.problems
    named = [p.split("=")[0].split(" ")[0] for p in problems]
    assert named == [
        "DATAVERSE_URL",
        "DATAVERSE_TENANT_ID",
        "DATAVERSE_CLIENT_ID",
        "DATAVERSE_CLIENT_SECRET_NAME",
        "KEY_VAULT_URL",
        "ENTRA_INSTANCE_DISCOVERY",
        "SECRET_CACHE_TTL_S",
    ]
    assert "multi-tenant alias" in problems[1]
    assert all("e.g." in p or "use " in p for p in problems)


def test_url_with_a_path_is_refused_with_an_example() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**GOOD, "DATAVERSE_URL": "https://contoso.crm4.dynamics.com/api/data/v9.2"})
    assert "has a path" in str(caught.value)
    assert "e.g. DATAVERSE_URL=https://" in str(caught.value)


def test_unresolved_key_vault_reference_is_explained() -> None:
    env = {**GOOD, "KEY_VAULT_URL": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/url/)"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    (problem,) = caught.value.problems
    assert problem.startswith("KEY_VAULT_URL holds an unresolved Key Vault reference")
    assert "Key Vault Secrets User" in problem
    assert "keyVaultReferenceIdentity" in problem


def test_secret_and_certificate_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError, match="both set"):
        Settings.from_env({**GOOD, "DATAVERSE_CERTIFICATE_NAME": "dataverse-cert"})
