"""devstack's read-only ARM (issue 20): "Permissions - List For Resource" at the vault and at a secret, for the
function app's identity (vault-wide Secrets User and Certificate User, Secrets Officer on the Dataverse secret)
and the rotation admin (vault-wide Secrets Officer), through azure-mgmt-authorization and over plain HTTP for
ARM's 401 envelope."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

FUNCTION_APP = None  # the system-assigned identity
ROTATION_ADMIN = "6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31"
ARM_SCOPE = "https://management.azure.com/.default"
API_VERSION = "2022-04-01"
SECRETS_ALL = "Microsoft.KeyVault/vaults/secrets/*"
SET_SECRET = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
READ_METADATA = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
SECRETS_USER = {"actions": [], "notActions": [], "dataActions": [GET_SECRET, READ_METADATA], "notDataActions": []}
CERTIFICATE_USER_DATA = [
    "Microsoft.KeyVault/vaults/certificates/read",
    GET_SECRET,
    READ_METADATA,
    "Microsoft.KeyVault/vaults/keys/read",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    tmp = tmp_path_factory.mktemp("arm")
    process = DevstackProcess(ROOT / "devstack" / "scenarios" / "default.yaml", tmp, "arm", "--no-azurite", "--memory")
    yield process
    process.stop()


@pytest.fixture
def arm(stack: DevstackProcess, app_env: Any) -> Any:
    app_env(stack)

    class Arm:
        vault_id = stack.env["KEY_VAULT_RESOURCE_ID"]
        url = stack.env["ARM_URL"]

        @staticmethod
        def token(client_id: str | None, scope: str = ARM_SCOPE) -> str:
            from azure.identity import ManagedIdentityCredential

            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            return credential.get_token(scope).token

        @staticmethod
        def get(scope: str, token: str | None, **params: str) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            return requests.get(
                f"{stack.env['ARM_URL']}{scope}/providers/Microsoft.Authorization/permissions",
                params={"api-version": API_VERSION, **params},
                headers=headers,
                verify=stack.env["REQUESTS_CA_BUNDLE"],
                timeout=10,
            )

        @staticmethod
        def sdk_permissions(client_id: str | None, secret: str | None = None) -> list[Any]:
            """``Permissions.list_for_resource`` as a management client would call it."""
            from azure.identity import ManagedIdentityCredential
            from azure.mgmt.authorization import AuthorizationManagementClient

            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            parts = stack.env["KEY_VAULT_RESOURCE_ID"].split("/")
            subscription, group, vault = parts[2], parts[4], parts[8]
            client = AuthorizationManagementClient(
                credential, subscription, base_url=stack.env["ARM_URL"], credential_scopes=[ARM_SCOPE]
            )
            if secret is None:
                pages = client.permissions.list_for_resource(group, "Microsoft.KeyVault", "", "vaults", vault)
            else:
                pages = client.permissions.list_for_resource(
                    group, "Microsoft.KeyVault", f"vaults/{vault}", "secrets", secret
                )
            return list(pages)

    return Arm


def data_actions(entries: list[dict[str, Any]]) -> set[str]:
    return {a for e in entries for a in e["dataActions"]}


def test_the_resource_id_names_the_vault(stack: DevstackProcess) -> None:
    assert stack.env["KEY_VAULT_RESOURCE_ID"].startswith("/subscriptions/")
    assert stack.env["KEY_VAULT_RESOURCE_ID"].endswith(
        "/resourceGroups/rg-dvbridge/providers/Microsoft.KeyVault/vaults/dvbridge-dev"
    )
    assert stack.env["ARM_URL"].startswith("https://127.0.0.1:")


def test_the_function_app_reads_at_the_vault_and_writes_only_its_secret(arm: Any) -> None:
    token = arm.token(FUNCTION_APP)
    at_vault = arm.get(arm.vault_id, token)
    assert at_vault.status_code == 200, at_vault.text
    entries = at_vault.json()["value"]
    assert SECRETS_USER in entries
    assert {"actions": [], "notActions": [], "dataActions": CERTIFICATE_USER_DATA, "notDataActions": []} in entries
    assert len(entries) == 2
    assert SECRETS_ALL not in data_actions(entries)
    at_secret = arm.get(f"{arm.vault_id}/secrets/dataverse-client-secret", token).json()["value"]
    assert len(at_secret) == 3
    officer = next(e for e in at_secret if SECRETS_ALL in e["dataActions"])
    assert "Microsoft.KeyVault/vaults/*/read" in officer["actions"]
    assert officer["notDataActions"] == []
    at_other = arm.get(f"{arm.vault_id}/secrets/erp-api-key", token).json()["value"]
    assert SECRETS_ALL not in data_actions(at_other)
    assert len(at_other) == 2


def test_the_rotation_admin_holds_the_officer_role_everywhere(arm: Any) -> None:
    token = arm.token(ROTATION_ADMIN)
    for scope in (
        arm.vault_id,
        f"{arm.vault_id}/secrets/erp-api-key",
        f"{arm.vault_id}/secrets/dataverse-client-secret",
    ):
        entries = arm.get(scope, token).json()["value"]
        assert [e["dataActions"] for e in entries] == [[SECRETS_ALL]], scope


def test_the_management_sdk_reads_the_same_permissions(arm: Any) -> None:
    vault = arm.sdk_permissions(FUNCTION_APP)
    assert sorted(tuple(p.data_actions) for p in vault) == sorted(
        [(GET_SECRET, READ_METADATA), tuple(CERTIFICATE_USER_DATA)]
    )
    secret = arm.sdk_permissions(FUNCTION_APP, "dataverse-client-secret")
    assert any(SECRETS_ALL in p.data_actions for p in secret)
    admin = arm.sdk_permissions(ROTATION_ADMIN, "erp-api-key")
    assert [p.data_actions for p in admin] == [[SECRETS_ALL]]


def test_above_the_vault_there_are_no_assignments(arm: Any) -> None:
    token = arm.token(ROTATION_ADMIN)
    group = arm.vault_id.split("/providers/")[0]
    answered = arm.get(group, token)
    assert answered.status_code == 200
    assert answered.json() == {"value": []}
    unknown = arm.get(arm.vault_id.replace("dvbridge-dev", "someone-elses"), token)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "ResourceNotFound"


def test_a_bad_token_is_refused_with_arms_envelope(arm: Any) -> None:
    missing = arm.get(arm.vault_id, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "AuthenticationFailed"
    invalid = arm.get(arm.vault_id, "not-a-token")
    assert invalid.status_code == 401
    assert invalid.json() == {
        "error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}
    }
    vault_token = arm.token(FUNCTION_APP, "https://vault.azure.net/.default")
    wrong_audience = arm.get(arm.vault_id, vault_token)
    assert wrong_audience.status_code == 401
    assert wrong_audience.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    assert "'https://vault.azure.net'" in wrong_audience.json()["error"]["message"]
    no_version = requests.get(
        f"{arm.url}{arm.vault_id}/providers/Microsoft.Authorization/permissions",
        headers={"Authorization": f"Bearer {arm.token(FUNCTION_APP)}"},
        verify=os.environ["REQUESTS_CA_BUNDLE"],
        timeout=10,
    )
    assert no_version.status_code == 400
    assert no_version.json()["error"]["code"] == "MissingApiVersionParameter"
