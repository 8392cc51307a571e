"""Dataverse connection strings: grammar, and refusal of user/password authentication."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shared.config import Settings
from shared.errors import CredentialFormatError
from shared.identity.connection_string import looks_like_connection_string, parse_connection_string
from shared.identity.credential import connection_string_credential
from shared.identity.secret_store import SecretValue

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env(
    {
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        "DATAVERSE_TENANT_ID": "contoso.onmicrosoft.com",
        "DATAVERSE_CLIENT_ID": "51f81489-12ee-4a9e-aaae-a2591f45987d",
        "DATAVERSE_CLIENT_SECRET_NAME": "dv",
        "KEY_VAULT_URL": "https://kv.vault.azure.net",
    }
)


def secret(value: str) -> SecretValue:
    return SecretValue(name="dv", value=value, version="1", content_type=None, expires_on=None)


def test_grammar_aliases_quotes_and_whitespace() -> None:
    pairs = parse_connection_string(
        " AuthType = ClientSecret ; ServiceUri=https://contoso.crm.dynamics.com;"
        " AppId=51f81489-12ee-4a9e-aaae-a2591f45987d; ClientSecret='a;b''c' ;"
    )
    assert pairs == {
        "authtype": "ClientSecret",
        "url": "https://contoso.crm.dynamics.com",
        "clientid": "51f81489-12ee-4a9e-aaae-a2591f45987d",
        "clientsecret": "a;b'c",
    }


@pytest.mark.parametrize("text", ["AuthType=ClientSecret;ClientSecret='unterminated", "novalue;"])
def test_malformed_strings_are_refused_without_echoing(text: str) -> None:
    with pytest.raises(CredentialFormatError) as caught:
        parse_connection_string(text)
    assert "unterminated" not in str(caught.value)


def test_a_bare_secret_is_not_a_connection_string() -> None:
    assert not looks_like_connection_string("Xy8Q~abcDEF.ghi_jkl-mno~pqrstuvwxyz012345")
    assert looks_like_connection_string("AuthType=ClientSecret;Url=https://x;ClientId=y;ClientSecret=z")


def test_client_secret_connection_string_gives_the_secret() -> None:
    credential = connection_string_credential(
        secret(
            "AuthType=ClientSecret;Url=https://contoso.crm.dynamics.com;"
            "ClientId=51f81489-12ee-4a9e-aaae-a2591f45987d;ClientSecret=s3cr3t-value-123"
        ),
        SETTINGS,
        store=SimpleNamespace(),  # type: ignore[arg-type]
    )
    assert credential.kind == "secret"
    assert credential.msal_credential() == "s3cr3t-value-123"
    assert "s3cr3t-value-123" not in repr(credential)


def test_password_auth_is_refused_with_the_way_to_s2s() -> None:
    with pytest.raises(CredentialFormatError) as caught:
        connection_string_credential(
            secret("AuthType=OAuth;Url=https://contoso.crm.dynamics.com;Username=jane@contoso.com;Password=Pa55word!x"),
            SETTINGS,
            store=SimpleNamespace(),  # type: ignore[arg-type]
        )
    message = str(caught.value)
    assert "Pa55word!x" not in message
    assert "AuthType=OAuth" in message
    assert "MFA" in message
    assert "application user" in message


def test_connection_string_for_another_environment_is_refused() -> None:
    with pytest.raises(CredentialFormatError, match="differs from DATAVERSE_URL"):
        connection_string_credential(
            secret("AuthType=ClientSecret;Url=https://other.crm.dynamics.com;ClientSecret=abcdefgh"),
            SETTINGS,
            store=SimpleNamespace(),  # type: ignore[arg-type]
        )


def test_certificate_connection_string_finds_the_vault_certificate_by_thumbprint() -> None:
    looked_up: list[str] = []

    def find(thumbprint: str) -> None:
        looked_up.append(thumbprint)
        return None

    with pytest.raises(CredentialFormatError, match="no certificate with Thumbprint"):
        connection_string_credential(
            secret("AuthType=Certificate;Url=https://contoso.crm.dynamics.com;Thumbprint=AB:CD:EF01"),
            SETTINGS,
            store=SimpleNamespace(find_certificate_name=find),  # type: ignore[arg-type]
        )
    assert looked_up == ["abcdef01"]
