"""After a rotation in Key Vault, the token provider uses the new secret: at once on AADSTS7000215,
and at the next TTL refresh otherwise."""

from __future__ import annotations

import logging
import time

import pytest

from shared.composition import dataverse_token, token_provider

pytestmark = pytest.mark.integration

ROTATION_ADMIN = "7c0de000-0000-4000-8000-000000000003"


def _rotate(stack, app: str, secret_name: str, vault_url: str) -> None:
    """What an operator does: add a secret in Entra, store it as a new Key Vault version."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    new = stack.control("entra", {"add_password": {"app": app, "display_name": "v2"}})
    client = SecretClient(
        vault_url, ManagedIdentityCredential(client_id=ROTATION_ADMIN), verify_challenge_resource=False
    )
    client.set_secret(secret_name, new["value"])


def _token_posts(stack) -> dict[str, int]:
    return stack.stats("entra")["requests"].get("POST /{tenant}/oauth2/v2.0/token", {})


def test_invalid_secret_triggers_an_immediate_reread(faults_devstack, app_env, caplog) -> None:
    settings = app_env(
        faults_devstack,
        DATAVERSE_CLIENT_ID="1a2b3c4d-0000-4000-8000-000000000006",
        DATAVERSE_CLIENT_SECRET_NAME="rotating-secret",
    )
    first = dataverse_token()
    _rotate(faults_devstack, "rotating-app", "rotating-secret", settings["KEY_VAULT_URL"])
    faults_devstack.control("entra", {"remove_password": {"app": "rotating-app", "display_name": "v1"}})
    faults_devstack.reset_stats()

    with caplog.at_level(logging.INFO):
        second = token_provider().token_for_invocation(force_refresh=True)

    assert second.value != first.value
    assert _token_posts(faults_devstack) == {"401": 1, "200": 1}  # old secret refused, new one accepted
    assert faults_devstack.stats("keyvault")["paths"]["GET /secrets/rotating-secret/"] == {"200": 1}
    assert any(
        "dataverse_credential_reloaded" in r.getMessage() and "AADSTS7000215" in r.getMessage() for r in caplog.records
    )


def test_rotation_is_picked_up_at_the_next_ttl_refresh(faults_devstack, app_env, caplog) -> None:
    settings = app_env(
        faults_devstack,
        DATAVERSE_CLIENT_ID="1a2b3c4d-0000-4000-8000-000000000007",
        DATAVERSE_CLIENT_SECRET_NAME="ttl-secret",
        SECRET_CACHE_TTL_S="1",
    )
    first = dataverse_token()
    _rotate(faults_devstack, "ttl-app", "ttl-secret", settings["KEY_VAULT_URL"])
    time.sleep(1.2)
    with caplog.at_level(logging.INFO):
        warm = dataverse_token()  # re-reads Key Vault (TTL passed), rebuilds MSAL, keeps the cached token
    assert warm.value == first.value
    assert warm.source == "cache"
    assert any("msal_app_rebuilt" in r.getMessage() for r in caplog.records)

    faults_devstack.control("entra", {"remove_password": {"app": "ttl-app", "display_name": "v1"}})
    faults_devstack.reset_stats()
    fresh = token_provider().token_for_invocation(force_refresh=True)
    assert fresh.value != first.value
    assert _token_posts(faults_devstack) == {"200": 1}  # the new secret was already in use: no refusal


def test_entra_outage_raises_the_same_typed_error(faults_devstack, app_env) -> None:
    """MSAL raises MsalServiceError on 5xx (instead of returning an error dict): still one AuthError."""
    from shared.errors import AuthError

    app_env(faults_devstack)
    faults_devstack.control("entra", {"fail_token_requests": 1})
    with pytest.raises(AuthError) as caught:
        dataverse_token()
    assert caught.value.code == "EntraUnavailable"
    assert "503" in caught.value.detail
    assert "retries" in caught.value.fix


def test_an_entra_outage_at_a_cold_start_is_entra_unavailable(faults_devstack, app_env) -> None:
    """A cold worker's MSAL app reads the OIDC document first; a 503 there (Entra down) used to escape as
    msal's MsalServiceError, and the run-now endpoint answered a bare 500 (found by the fault matrix)."""
    import requests

    from shared.errors import AuthError

    app_env(faults_devstack)  # resets the worker: no MSAL app, no cached token
    outage = f"{faults_devstack.url('entra')}/_devstack/outage"
    requests.post(outage, json={"seconds": 30}, verify=faults_devstack.env["DEVSTACK_CA_CERT"], timeout=10)
    try:
        with pytest.raises(AuthError) as caught:
            dataverse_token()
    finally:
        requests.post(outage, json={"seconds": 0}, verify=faults_devstack.env["DEVSTACK_CA_CERT"], timeout=10)
    assert caught.value.code == "EntraUnavailable"
    assert "OIDC discovery" in caught.value.detail
    assert dataverse_token().value  # and the worker recovers once Entra is back


def test_refresh_margin_wider_than_msal_forces_a_new_token(faults_devstack, app_env) -> None:
    """Tokens live 3599 s; with a 3597 s margin a 3-second-old token is too old for an invocation,
    although MSAL's own 300 s rule would still serve it from the cache."""
    import dataclasses

    from shared.composition import secret_store, settings
    from shared.identity.token_provider import DataverseTokenProvider

    app_env(faults_devstack)
    provider = DataverseTokenProvider(dataclasses.replace(settings(), token_refresh_margin_s=3597), secret_store())
    first = provider.token_for_invocation()
    assert provider.token_for_invocation().source == "cache"
    time.sleep(3)
    second = provider.token_for_invocation()
    assert second.source == "identity_provider"
    assert second.value != first.value
    assert second.expires_in() > 3590
