"""Acceptance 4: each catalogue failure, produced in devstack, yields the right AuthError (code, cause,
fix) and the doctor names the failing step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from shared.composition import dataverse_token
from shared.errors import AuthError, ConfigError
from shared.identity.diagnosis import CATALOGUE
from shared.identity.doctor import run_doctor

pytestmark = pytest.mark.integration

CERT = {"DATAVERSE_CLIENT_SECRET_NAME": ""}


@dataclass
class Case:
    code: str
    overrides: dict[str, str]
    doctor_step: str
    cause_mentions: str  # the cause must name the concrete culprit
    fix_mentions: str
    control: dict[str, object] = field(default_factory=dict)  # devstack Entra fault to apply first


CASES = [
    Case(
        "AADSTS700016",
        {"DATAVERSE_CLIENT_ID": "0badc0de-0000-4000-8000-000000000000"},
        "entra token",
        "0badc0de-0000-4000-8000-000000000000",
        "DATAVERSE_CLIENT_ID",
    ),
    Case(
        "AADSTS7000215", {"DATAVERSE_CLIENT_SECRET_NAME": "wrong-secret"}, "entra token", "wrong-secret", "new version"
    ),
    Case(
        "AADSTS7000222",
        {
            "DATAVERSE_CLIENT_ID": "1a2b3c4d-0000-4000-8000-000000000002",
            "DATAVERSE_CLIENT_SECRET_NAME": "expired-secret",
        },
        "credential expiry",  # the doctor already sees the Entra end date has passed
        "expired-secret",
        "new client secret",
    ),
    Case(
        "AADSTS700027",
        {
            **CERT,
            "DATAVERSE_CLIENT_ID": "1a2b3c4d-0000-4000-8000-000000000004",
            "DATAVERSE_CERTIFICATE_NAME": "mismatch-cert",
        },
        "entra token",
        "mismatch-cert",
        "upload",
    ),
    Case(
        "AADSTS700027",
        {
            **CERT,
            "DATAVERSE_CLIENT_ID": "1a2b3c4d-0000-4000-8000-000000000005",
            "DATAVERSE_CERTIFICATE_NAME": "lapsed-cert",
        },
        "credential expiry",
        "lapsed-cert",
        "validity",
    ),
    Case(
        "AADSTS700024",
        {**CERT, "DATAVERSE_CERTIFICATE_NAME": "good-cert"},
        "entra token",
        "clock",
        "NTP",
        control={"clock_offset_s": 3600},
    ),
    Case(
        "AADSTS500011",
        {"DATAVERSE_URL": "https://nowhere.crm4.dynamics.com"},
        "entra token",
        "https://nowhere.crm4.dynamics.com",
        "Environment URL",
    ),
    Case(
        "AADSTS90002",
        {"DATAVERSE_TENANT_ID": "00000000-dead-4bee-8f00-000000000000"},
        "entra token",
        "00000000-dead-4bee-8f00-000000000000",
        "DATAVERSE_TENANT_ID",
    ),
    Case(
        "AADSTS65001",
        {
            "DATAVERSE_CLIENT_ID": "1a2b3c4d-0000-4000-8000-000000000003",
            "DATAVERSE_CLIENT_SECRET_NAME": "consent-secret",
        },
        "entra token",
        "1a2b3c4d-0000-4000-8000-000000000003",
        "admin consent",
    ),
    Case(
        "ForbiddenByRbac",
        {"AZURE_CLIENT_ID": "7c0de000-0000-4000-8000-000000000001"},
        "key vault",
        "7c0de000",
        "Key Vault Secrets User",
    ),
    Case(
        "SecretNotFound",
        {"DATAVERSE_CLIENT_SECRET_NAME": "no-such-secret"},
        "key vault",
        "no-such-secret",
        "DATAVERSE_CLIENT_SECRET_NAME",
    ),
    Case(
        "SecretDisabled", {"DATAVERSE_CLIENT_SECRET_NAME": "disabled-secret"}, "key vault", "disabled-secret", "Enable"
    ),
    Case(
        "ManagedIdentityUnavailable",
        {"IDENTITY_HEADER": "not-the-header"},
        "managed identity",
        "IDENTITY_HEADER",
        "Enable the system-assigned",
    ),
    Case(
        "ManagedIdentityNotFound",
        {"AZURE_CLIENT_ID": str(uuid.UUID(int=7))},
        "managed identity",
        str(uuid.UUID(int=7)),
        "Attach the identity",
    ),
    Case(
        "ChallengeResourceMismatch",
        {"KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "true"},
        "key vault",
        "vault.azure.net",
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE",
    ),
    Case(
        "0x80072560",
        {
            "DATAVERSE_CLIENT_ID": "1a2b3c4d-0000-4000-8000-000000000008",
            "DATAVERSE_CLIENT_SECRET_NAME": "orphan-secret",
        },
        "whoami",
        "1a2b3c4d-0000-4000-8000-000000000008",
        "New app user",
    ),
    Case(
        "0x80040220",
        {"DATAVERSE_TABLES": "accounts,contacts"},  # the app's role grants accounts only
        "privileges",
        "contacts",
        "security role",
        {},
    ),
    Case("KeyVaultUnreachable", {"KEY_VAULT_URL": "https://127.0.0.1:9"}, "key vault", "127.0.0.1:9", "KEY_VAULT_URL"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.code}-{i}" for i, c in enumerate(CASES)])
def test_catalogue_failure_is_explained(case: Case, faults_devstack, app_env) -> None:
    app_env(faults_devstack, **case.overrides)
    if case.control:
        faults_devstack.control("entra", case.control)
    try:
        report = run_doctor()
        if case.doctor_step in ("whoami", "privileges"):  # the token is fine; Dataverse refuses the caller
            step = report.failed_step
            assert step is not None
            error = AuthError(
                step.code or "", cause=step.cause or "", fix=step.fix or "", step=step.name, detail=step.summary
            )
        else:
            with pytest.raises(AuthError) as caught:
                dataverse_token()
            error = caught.value
    finally:
        if case.control:
            faults_devstack.control("entra", {"clock_offset_s": 0})

    assert error.code == case.code
    entry = CATALOGUE[case.code]
    assert error.cause
    assert error.fix
    assert case.cause_mentions in error.cause + error.detail
    assert case.fix_mentions in error.fix
    assert entry.fix.split("{")[0][:30] in error.fix  # the catalogue's fix, filled in
    assert not report.ok
    assert report.failed_step is not None
    assert report.failed_step.name == case.doctor_step
    if case.doctor_step == "credential expiry":
        assert report.failed_step.code == "CredentialExpired"
    else:
        assert report.failed_step.code == case.code


def test_graph_permission_missing_is_a_doctor_warning(faults_devstack, app_env) -> None:
    app_env(faults_devstack, AZURE_CLIENT_ID="7c0de000-0000-4000-8000-000000000002")
    report = run_doctor()
    expiry = next(s for s in report.steps if s.name == "credential expiry")
    assert "Authorization_RequestDenied" in expiry.summary
    assert "Application.Read.All" in expiry.summary
    assert report.ok  # Graph is optional: the chain itself works


def test_expiry_drift_between_key_vault_and_entra_is_reported(faults_devstack, app_env) -> None:
    app_env(faults_devstack)
    report = run_doctor()
    expiry = next(s for s in report.steps if s.name == "credential expiry")
    # good-secret: Key Vault and Entra both end in 20 days -> inside the 30-day warning window.
    assert expiry.status == "warn"
    assert expiry.code == "CredentialExpiringSoon"
    assert "Entra endDateTime" in expiry.details


def test_password_connection_string_is_refused_with_the_way_out(faults_devstack, app_env) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    settings = app_env(faults_devstack, DATAVERSE_CLIENT_SECRET_NAME="nav-connection")
    admin = ManagedIdentityCredential(client_id="7c0de000-0000-4000-8000-000000000003")
    vault = SecretClient(settings["KEY_VAULT_URL"], admin, verify_challenge_resource=False)
    password = "Winter2026!nav-" + uuid.uuid4().hex[:8]
    vault.set_secret(
        "nav-connection",
        f"AuthType=OAuth;Username=jane@fabrikam.com;Password={password};Url={settings['DATAVERSE_URL']};"
        "AppId=51f81489-12ee-4a9e-aaae-a2591f45987d;RedirectUri=app://58145B91-0C36-4500-8554-080854F2AC97",
    )
    with pytest.raises(ConfigError) as caught:
        dataverse_token()
    message = str(caught.value)
    assert password not in message
    assert "AuthType=OAuth" in message
    assert "MFA" in message
    assert "application user" in message
    report = run_doctor()
    assert report.failed_step is not None
    assert report.failed_step.name == "credential"
    assert password not in str(report.to_dict())
