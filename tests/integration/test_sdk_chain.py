"""Acceptance 2: with devstack's environment, the unmodified SDKs (azure-identity, azure-keyvault-
secrets/-certificates, msal) read the Dataverse secret and certificate and get Dataverse tokens."""

from __future__ import annotations

import textwrap

import pytest

from tests.devstack_process import run_python

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json, os
    import jwt, msal
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

    vault, verify = os.environ["KEY_VAULT_URL"], False  # KEY_VAULT_VERIFY_CHALLENGE_RESOURCE=false
    credential = ManagedIdentityCredential()
    secrets = SecretClient(vault, credential, verify_challenge_resource=verify)
    certificates = CertificateClient(vault, credential, verify_challenge_resource=verify)
    authority = os.environ["ENTRA_AUTHORITY_HOST"] + "/" + os.environ["DATAVERSE_TENANT_ID"]
    scope = [os.environ["DATAVERSE_URL"] + "/.default"]
    out = {}

    secret = secrets.get_secret(os.environ["DATAVERSE_CLIENT_SECRET_NAME"])
    out["secret_expires"] = secret.properties.expires_on.isoformat()
    app = msal.ConfidentialClientApplication(
        os.environ["DATAVERSE_CLIENT_ID"], authority=authority, client_credential=secret.value, instance_discovery=False
    )
    result = app.acquire_token_for_client(scope)
    out["secret_token_aud"] = jwt.decode(result["access_token"], options={"verify_signature": False})["aud"]

    cert = certificates.get_certificate("dataverse-cert")
    out["cert_content_type"] = str(cert.policy.content_type)
    pem = secrets.get_secret("dataverse-cert").value
    app = msal.ConfidentialClientApplication(
        os.environ["DATAVERSE_CLIENT_ID"], authority=authority, instance_discovery=False,
        client_credential={"private_key": pem, "thumbprint": cert.properties.x509_thumbprint.hex()},
    )
    result = app.acquire_token_for_client(scope)
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    out["cert_token_aud"], out["cert_token_appid"] = claims["aud"], claims["appid"]

    pfx = secrets.get_secret("dataverse-cert-pfx")
    out["pfx_content_type"] = pfx.properties.content_type
    out["listed"] = sorted(p.name for p in secrets.list_properties_of_secrets(max_page_size=2))
    print(json.dumps(out))
    """
)


def test_unmodified_sdks_complete_the_chain(devstack) -> None:
    devstack.reset_stats()
    out = run_python(SCRIPT, devstack)
    dataverse = devstack.env["DATAVERSE_URL"]
    assert out["secret_token_aud"] == dataverse
    assert out["cert_token_aud"] == dataverse
    assert out["cert_token_appid"] == devstack.env["DATAVERSE_CLIENT_ID"]
    assert out["cert_content_type"] == "CertificateContentType.pem"
    assert out["pfx_content_type"] == "application/x-pkcs12"
    # Paging: all eight objects at two per page are listed (the SDK followed nextLink over four pages).
    assert out["listed"] == [
        "alerts-webhook-url", "dataverse-cert", "dataverse-cert-pfx", "dataverse-client-secret", "erp-api-key",
        "erp-webhook-secret", "slack-webhook-url", "teams-webhook-url",
    ]  # fmt: skip
    # devstack's own counters saw the two Dataverse tokens (secret and certificate).
    issued = devstack.stats("entra")["tokens_issued"][devstack.env["DATAVERSE_CLIENT_ID"]]
    assert issued == {dataverse: 2}
    assert devstack.stats("keyvault")["requests"]["GET /secrets"]["200"] == 4  # 8 objects, 2 per page
