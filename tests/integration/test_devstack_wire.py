"""devstack answers on the wire as the real services do (status, headers, error bodies)."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration


def _ca(stack) -> str:
    return str(stack.env["REQUESTS_CA_BUNDLE"])


def test_key_vault_challenge_and_rbac_body(faults_devstack) -> None:
    vault = faults_devstack.env["KEY_VAULT_URL"]
    anonymous = requests.get(f"{vault}/secrets/good-secret/?api-version=7.5", verify=_ca(faults_devstack), timeout=10)
    assert anonymous.status_code == 401
    challenge = anonymous.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer authorization="')
    assert 'resource="https://vault.azure.net"' in challenge

    token = requests.get(
        faults_devstack.env["IDENTITY_ENDPOINT"],
        params={
            "api-version": "2019-08-01",
            "resource": "https://vault.azure.net",
            "client_id": "7c0de000-0000-4000-8000-000000000001",
        },
        headers={"X-IDENTITY-HEADER": faults_devstack.env["IDENTITY_HEADER"]},
        timeout=10,
    ).json()
    assert token["expires_on"].isdigit()
    denied = requests.get(
        f"{vault}/secrets/good-secret?api-version=2026-04-01",
        headers={"Authorization": f"Bearer {token['access_token']}"},
        verify=_ca(faults_devstack),
        timeout=10,
    )
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["code"] == "Forbidden"
    assert error["innererror"] == {"code": "ForbiddenByRbac"}
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in error["message"]


def test_entra_error_body_has_the_real_shape(faults_devstack) -> None:
    entra, tenant = faults_devstack.env["ENTRA_AUTHORITY_HOST"], faults_devstack.env["DATAVERSE_TENANT_ID"]
    response = requests.post(
        f"{entra}/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": faults_devstack.env["DATAVERSE_CLIENT_ID"],
            "client_secret": "not-the-secret",
            "scope": f"{faults_devstack.env['DATAVERSE_URL']}/.default",
        },
        verify=_ca(faults_devstack),
        timeout=10,
    )
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: ")


def test_managed_identity_endpoint_refuses_bad_callers(faults_devstack) -> None:
    endpoint = faults_devstack.env["IDENTITY_ENDPOINT"]
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    wrong_header = requests.get(endpoint, params=params, headers={"X-IDENTITY-HEADER": "nope"}, timeout=10)
    assert wrong_header.status_code == 401
    unknown = requests.get(
        endpoint,
        params={**params, "client_id": "00000000-0000-4000-8000-00000000abcd"},
        headers={"X-IDENTITY-HEADER": faults_devstack.env["IDENTITY_HEADER"]},
        timeout=10,
    )
    assert unknown.status_code == 400


def test_graph_returns_app_credentials_to_a_reader_only(faults_devstack) -> None:
    endpoint, graph = faults_devstack.env["IDENTITY_ENDPOINT"], faults_devstack.env["GRAPH_URL"]

    def token(client_id: str | None) -> str:
        params = {"api-version": "2019-08-01", "resource": graph}
        if client_id:
            params["client_id"] = client_id
        return str(
            requests.get(
                endpoint,
                params=params,
                headers={"X-IDENTITY-HEADER": faults_devstack.env["IDENTITY_HEADER"]},
                timeout=10,
            ).json()["access_token"]
        )

    url = f"{graph}/v1.0/applications"
    query = {
        "$filter": "appId eq '1a2b3c4d-0000-4000-8000-000000000001'",
        "$select": "appId,passwordCredentials,keyCredentials",
    }
    reader = requests.get(
        url, params=query, headers={"Authorization": f"Bearer {token(None)}"}, verify=_ca(faults_devstack), timeout=10
    )
    assert reader.status_code == 200
    (app,) = reader.json()["value"]
    assert app["passwordCredentials"][0]["displayName"] == "primary"
    assert len(app["passwordCredentials"][0]["hint"]) == 3
    assert app["keyCredentials"][0]["type"] == "AsymmetricX509Cert"
    denied = requests.get(
        url,
        params=query,
        headers={"Authorization": f"Bearer {token('7c0de000-0000-4000-8000-000000000002')}"},
        verify=_ca(faults_devstack),
        timeout=10,
    )
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Authorization_RequestDenied"
