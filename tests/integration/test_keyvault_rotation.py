"""devstack's Key Vault as the credential rotation uses it (issue 20), over real sockets with the unmodified
azure-keyvault-secrets/-certificates SDKs and azure-identity's ManagedIdentityCredential: new versions with
tags, expiry and content type; disabled versions; role assignments scoped to one secret; certificate versions,
policy and renewal (by the control endpoint and by the world clock) with Key Vault's Event Grid event."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

FUNCTION_APP = "8a4e2c6b-1d3f-4b7a-9e5c-0f2d6b8a4c21"  # default.yaml: system-assigned, Officer on one secret
ROTATION_ADMIN = "6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31"  # default.yaml: Secrets Officer on the whole vault
CERT_READER = "c0ffee00-0000-4000-8000-00000000ce57"  # added here: Certificate User on one certificate only
SECRET = "dataverse-client-secret"
OTHER_SECRET = "erp-api-key"
CERTIFICATE = "dataverse-cert"
PFX_CERTIFICATE = "dataverse-cert-pfx"
SET_ACTION = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
UPDATE_ACTION = "Microsoft.KeyVault/vaults/secrets/update/action"
GET_ACTION = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
RENEWAL_WAIT_S = 8


def scenario(directory: Path) -> Path:
    world = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    world["managed_identities"].append(
        {
            "name": "cert-reader",
            "type": "user",
            "client_id": CERT_READER,
            "key_vault_roles": [{"role": "Key Vault Certificate User", "scope": f"certificates/{CERTIFICATE}"}],
        }
    )
    path = directory / "keyvault-rotation.yaml"
    path.write_text(yaml.safe_dump(world, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    tmp = tmp_path_factory.mktemp("kvrotation")
    process = DevstackProcess(scenario(tmp), tmp / "state", "kvrotation", "--no-azurite", "--memory")
    yield process
    process.stop()


@pytest.fixture
def vault(stack: DevstackProcess, app_env: Any) -> Any:
    """Clients as the app builds them: the unmodified SDKs over ManagedIdentityCredential."""
    app_env(stack)
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

    url = stack.env["KEY_VAULT_URL"]

    class Clients:
        @staticmethod
        def secrets(client_id: str | None = None) -> SecretClient:
            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            return SecretClient(url, credential, verify_challenge_resource=False)

        @staticmethod
        def certificates(client_id: str | None = None) -> CertificateClient:
            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            return CertificateClient(url, credential, verify_challenge_resource=False)

    return Clients


def refused(call: Any) -> Any:
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value


def new_value() -> str:
    return "t3st~" + secrets.token_urlsafe(27)


# -- secrets: new versions, disabled versions --------------------------------------------------------------


def test_a_new_version_keeps_tags_expiry_and_content_type_and_is_the_latest(vault: Any) -> None:
    client = vault.secrets()  # the function app's own identity: Officer on this one secret
    before = client.get_secret(SECRET)
    expires = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0)
    stored = client.set_secret(
        SECRET, new_value(), content_type="text/plain", expires_on=expires, tags={"entraKeyId": "k-2", "by": "test"}
    )
    latest = client.get_secret(SECRET)
    assert latest.properties.version == stored.properties.version != before.properties.version
    assert latest.value == stored.value
    assert latest.properties.tags == {"entraKeyId": "k-2", "by": "test"}
    assert latest.properties.content_type == "text/plain"
    assert latest.properties.expires_on == expires
    versions = {p.version for p in client.list_properties_of_secret_versions(SECRET)}
    assert {before.properties.version, stored.properties.version} <= versions


def test_a_disabled_version_is_refused_by_version_and_the_latest_stays_readable(vault: Any) -> None:
    client = vault.secrets()
    old = client.get_secret(SECRET)
    new = client.set_secret(SECRET, new_value(), content_type="text/plain")
    props = client.update_secret_properties(SECRET, old.properties.version, enabled=False)
    assert props.version == old.properties.version
    assert props.enabled is False
    error = refused(lambda: client.get_secret(SECRET, old.properties.version))
    assert error.status_code == 403
    assert error.error.code == "Forbidden"
    assert "SecretDisabled" in str(error)
    assert client.get_secret(SECRET).properties.version == new.properties.version
    listed = {p.version: p.enabled for p in client.list_properties_of_secret_versions(SECRET)}
    assert listed[old.properties.version] is False
    assert listed[new.properties.version] is True


def test_a_disabled_latest_version_is_refused_without_falling_back(vault: Any) -> None:
    client = vault.secrets(ROTATION_ADMIN)
    name = "scratch-latest-disabled"
    first = client.set_secret(name, new_value())
    second = client.set_secret(name, new_value())
    client.update_secret_properties(name, second.properties.version, enabled=False)
    error = refused(lambda: client.get_secret(name))
    assert error.status_code == 403
    assert "SecretDisabled" in str(error)
    assert client.get_secret(name, first.properties.version).value == first.value


def test_an_old_value_restored_is_a_new_latest_version_and_properties_update_in_place(vault: Any) -> None:
    client = vault.secrets(ROTATION_ADMIN)
    name = "scratch-restore"
    first = client.set_secret(name, new_value(), content_type="text/plain")
    client.set_secret(name, new_value())
    restored = client.set_secret(name, client.get_secret(name, first.properties.version).value or "")
    latest = client.get_secret(name)
    assert latest.value == first.value
    assert latest.properties.version == restored.properties.version != first.properties.version
    expires = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    props = client.update_secret_properties(
        name, first.properties.version, tags={"retired": "yes"}, content_type="application/json", expires_on=expires
    )
    assert (props.tags, props.content_type, props.expires_on) == ({"retired": "yes"}, "application/json", expires)
    again = client.get_secret(name, first.properties.version)
    assert again.properties.tags == {"retired": "yes"}
    assert again.properties.expires_on == expires
    assert again.value == first.value  # PATCH never touches the value


# -- role scopes --------------------------------------------------------------------------------------------


def test_a_role_scoped_to_one_secret_writes_that_secret_only(vault: Any) -> None:
    client = vault.secrets()
    client.set_secret(SECRET, new_value())  # Officer at secrets/dataverse-client-secret
    assert client.get_secret(OTHER_SECRET).value  # Secrets User on the vault still reads the others
    error = refused(lambda: client.set_secret(OTHER_SECRET, new_value()))
    assert error.status_code == 403
    assert error.error.code == "Forbidden"
    message = str(error)
    assert "ForbiddenByRbac" in message
    assert f"Action: '{SET_ACTION}'" in message
    assert f"/providers/microsoft.keyvault/vaults/dvbridge-dev/secrets/{OTHER_SECRET}'" in message
    version = client.get_secret(OTHER_SECRET).properties.version
    error = refused(lambda: client.update_secret_properties(OTHER_SECRET, version, enabled=False))
    assert f"Action: '{UPDATE_ACTION}'" in str(error)
    assert client.get_secret(OTHER_SECRET).properties.enabled is True


def test_the_vault_wide_officer_keeps_its_rights_everywhere(vault: Any) -> None:
    client = vault.secrets(ROTATION_ADMIN)
    stored = client.set_secret(OTHER_SECRET, new_value(), tags={"by": "rotation-admin"})
    props = client.update_secret_properties(OTHER_SECRET, stored.properties.version, tags={"by": "admin"})
    assert props.tags == {"by": "admin"}
    assert client.get_secret(OTHER_SECRET).properties.version == stored.properties.version
    client.set_secret(SECRET, new_value())


def test_a_certificate_role_does_not_cover_its_backing_secret(vault: Any) -> None:
    certificates = vault.certificates(CERT_READER)
    assert certificates.get_certificate(CERTIFICATE).name == CERTIFICATE
    error = refused(lambda: vault.secrets(CERT_READER).get_secret(CERTIFICATE))
    assert f"Action: '{GET_ACTION}'" in str(error)
    assert f"/secrets/{CERTIFICATE}'" in str(error)
    assert refused(lambda: certificates.get_certificate(PFX_CERTIFICATE)).status_code == 403


# -- certificates: policy, versions, renewal ---------------------------------------------------------------


def test_the_certificate_policy_reads_back_with_its_lifetime_action(vault: Any) -> None:
    from azure.keyvault.certificates import CertificateContentType, CertificatePolicyAction

    client = vault.certificates()
    policy = client.get_certificate_policy(CERTIFICATE)
    assert policy.issuer_name == "Self"
    assert policy.validity_in_months == 12
    assert policy.content_type == CertificateContentType.pem
    assert policy.subject == "CN=dvbridge-sync-dvbridge-cert"
    assert [(a.action, a.days_before_expiry, a.lifetime_percentage) for a in policy.lifetime_actions or []] == [
        (CertificatePolicyAction.auto_renew, 30, None)
    ]
    pfx = client.get_certificate_policy(PFX_CERTIFICATE)
    assert pfx.content_type == CertificateContentType.pkcs12
    assert [(a.action, a.lifetime_percentage) for a in pfx.lifetime_actions or []] == [
        (CertificatePolicyAction.email_contacts, 80)
    ]


def thumbprint(cert: Any) -> str:
    return bytes(cert.properties.x509_thumbprint or b"").hex().upper()


def backing_key_matches(vault: Any, version: str, certificate_der: bytes) -> bool:
    bundle = vault.secrets().get_secret(CERTIFICATE, version)
    key = serialization.load_pem_private_key((bundle.value or "").encode(), None)
    certificate = x509.load_der_x509_certificate(certificate_der)
    numbers = certificate.public_key().public_numbers()  # type: ignore[union-attr]
    return bool(key.public_key().public_numbers() == numbers)  # type: ignore[union-attr]


def token_error(stack: DevstackProcess, pem: str, cert_der: bytes) -> str | None:
    """A client-credentials token request for the app signed with this key: None when Entra issues one."""
    import msal

    sha1 = x509.load_der_x509_certificate(cert_der).fingerprint(hashes.SHA1()).hex()  # noqa: S303 - x5t
    app = msal.ConfidentialClientApplication(
        stack.env["DATAVERSE_CLIENT_ID"],
        client_credential={"private_key": pem, "thumbprint": sha1},
        authority=f"{stack.env['ENTRA_AUTHORITY_HOST']}/{stack.env['DATAVERSE_TENANT_ID']}",
        instance_discovery=False,
    )
    result = app.acquire_token_for_client([f"{stack.env['DATAVERSE_URL']}/.default"])
    return None if "access_token" in result else str(result.get("error_codes"))


def vault_events(stack: DevstackProcess) -> list[dict[str, Any]]:
    return list(stack._call("keyvault", "/_devstack/events")["events"])


def test_renewal_on_request_adds_a_version_with_a_new_key_that_entra_does_not_know(
    stack: DevstackProcess, vault: Any
) -> None:
    client = vault.certificates()
    before = client.get_certificate(CERTIFICATE)
    answer = stack.control("keyvault", {"renew_certificate": CERTIFICATE})
    after = client.get_certificate(CERTIFICATE)
    assert after.properties.version == answer["version"] != before.properties.version
    assert thumbprint(after) == answer["thumbprint"] != thumbprint(before)
    listed = [p.version for p in client.list_properties_of_certificate_versions(CERTIFICATE)]
    assert before.properties.version in listed
    assert answer["version"] in listed
    by_version = client.get_certificate_version(CERTIFICATE, answer["version"])
    assert by_version.cer == after.cer
    new_cert = x509.load_der_x509_certificate(bytes(after.cer or b""))
    old_cert = x509.load_der_x509_certificate(bytes(before.cer or b""))
    assert new_cert.subject == old_cert.subject
    lifetime = new_cert.not_valid_after_utc - new_cert.not_valid_before_utc
    assert timedelta(days=364) <= lifetime <= timedelta(days=367)  # validity_months: 12
    assert after.properties.expires_on == new_cert.not_valid_after_utc
    assert backing_key_matches(vault, answer["version"], bytes(after.cer or b""))
    assert not backing_key_matches(vault, before.properties.version or "", bytes(after.cer or b""))
    # Entra accepts the scenario's certificate, and not Key Vault's new one until the app uploads it (addKey).
    old_pem = vault.secrets().get_secret(CERTIFICATE, before.properties.version).value or ""
    new_pem = vault.secrets().get_secret(CERTIFICATE, answer["version"]).value or ""
    assert token_error(stack, old_pem, bytes(before.cer or b"")) is None
    assert token_error(stack, new_pem, bytes(after.cer or b"")) is not None
    # Key Vault's event for the new version (recorded; with a host it is delivered to its Event Grid endpoint).
    created = [e for e in vault_events(stack) if e["eventType"] == "Microsoft.KeyVault.CertificateNewVersionCreated"]
    data = next(e["event"]["data"] for e in created if e["event"]["data"]["Version"] == answer["version"])
    assert data == {
        "Id": f"{stack.env['KEY_VAULT_URL']}/certificates/{CERTIFICATE}/{answer['version']}",
        "VaultName": "dvbridge-dev",
        "ObjectType": "Certificate",
        "ObjectName": CERTIFICATE,
        "Version": answer["version"],
        "NBF": int(new_cert.not_valid_before_utc.timestamp()),
        "EXP": int(new_cert.not_valid_after_utc.timestamp()),
    }
    event = next(e["event"] for e in created if e["event"]["data"]["Version"] == answer["version"])
    assert event["topic"] == stack.env["KEY_VAULT_RESOURCE_ID"]
    assert event["subject"] == CERTIFICATE


def test_renewal_by_the_world_clock_when_the_lifetime_action_is_due(stack: DevstackProcess, vault: Any) -> None:
    client = vault.certificates()
    before = client.get_certificate(CERTIFICATE)
    pfx_versions = len(list(client.list_properties_of_certificate_versions(PFX_CERTIFICATE)))
    assert before.properties.expires_on is not None
    not_yet = (before.properties.expires_on - datetime.now(UTC) - timedelta(days=31)).total_seconds()
    stack.control("entra", {"clock_offset_s": not_yet})  # a day before the trigger: nothing happens
    try:
        time.sleep(2.5)
        assert client.get_certificate(CERTIFICATE).properties.version == before.properties.version
        due = (before.properties.expires_on - datetime.now(UTC) - timedelta(days=29)).total_seconds()
        stack.control("entra", {"clock_offset_s": due})  # 29 days before expiry: past the 30-day trigger
        deadline = time.monotonic() + RENEWAL_WAIT_S
        renewed = before
        while time.monotonic() < deadline and renewed.properties.version == before.properties.version:
            time.sleep(0.25)
            renewed = client.get_certificate(CERTIFICATE)
        assert renewed.properties.version != before.properties.version, "no renewal once the trigger passed"
        assert thumbprint(renewed) != thumbprint(before)
        new_cert = x509.load_der_x509_certificate(bytes(renewed.cer or b""))
        world_now = datetime.now(UTC) + timedelta(seconds=due)
        assert abs((new_cert.not_valid_before_utc - world_now).total_seconds()) < 60, "valid from the world's now"
        time.sleep(2.5)  # the new version's own trigger is a year away: no second renewal
        versions = [p.version for p in client.list_properties_of_certificate_versions(CERTIFICATE)]
        assert versions[-1] == renewed.properties.version
        assert versions.count(renewed.properties.version) == 1
        assert len(versions) == len(set(versions))
        assert client.get_certificate(CERTIFICATE).properties.version == renewed.properties.version
        assert len(list(client.list_properties_of_certificate_versions(PFX_CERTIFICATE))) == pfx_versions
        assert any(e["event"]["data"]["Version"] == renewed.properties.version for e in vault_events(stack))
    finally:
        stack.control("entra", {"clock_offset_s": 0})
