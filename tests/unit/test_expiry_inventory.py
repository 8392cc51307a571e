"""Where the monitor's credentials come from: Key Vault properties (a fake vault returning the SDK's own
property objects), Entra app registrations as Graph returns them (the real GraphReader over fake HTTP), and
the drift between a Key Vault copy and its Entra secret."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import AuthError
from shared.expiry.inventory import drift_findings, entra_credentials, vault_credentials
from shared.expiry.model import Credential
from tests.fakes import FakeGraph, FakeHttp, FakeSecretStore
from tests.fakes.sockets import no_sockets  # noqa: F401 - autouse: this module opens no socket

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
APP = "7c4e2a1f-9b3d-4f5e-8a6c-2d1e0f9b8a71"
KEY = "5b1c0d6e-0000-4000-8000-000000000001"
THUMB = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")


def iso(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


# -- Key Vault -----------------------------------------------------------------------------------------
def test_vault_credentials_come_from_properties_without_reading_a_value() -> None:
    store = FakeSecretStore("https://KV-Prod.vault.azure.net/")
    store.set_secret("partner", "value-0123456789", expires_on=NOW, tags={"entraKeyId": KEY},
                     created_on=NOW - timedelta(days=9), updated_on=NOW - timedelta(days=2))  # fmt: skip
    store.set_secret("plain", "value-0123456789", created_on=NOW - timedelta(days=9))
    store.set_secret("off", "value-0123456789", enabled=False, expires_on=NOW)
    store.set_secret("cert-backing", "pfx-0123456789", managed=True, expires_on=NOW)
    store.set_certificate("tls", expires_on=NOW + timedelta(days=40), thumbprint=THUMB)
    store.set_certificate("retired", expires_on=NOW, enabled=False)
    found = {c.id: c for c in vault_credentials(store, "kv-prod")}
    assert sorted(found) == ["kv-certificate:kv-prod:tls", "kv-secret:kv-prod:partner", "kv-secret:kv-prod:plain"]
    partner = found["kv-secret:kv-prod:partner"]
    assert (partner.source, partner.expires_on, partner.key_id, partner.owner) == (
        "keyvault-secret", NOW, KEY, "vault kv-prod")  # fmt: skip
    assert partner.created_on == NOW - timedelta(days=2)  # the latest version's update is its start
    assert found["kv-secret:kv-prod:plain"].expires_on is None
    assert found["kv-secret:kv-prod:plain"].created_on == NOW - timedelta(days=9)
    tls = found["kv-certificate:kv-prod:tls"]
    assert (tls.source, tls.expires_on, tls.extra) == ("keyvault-certificate", NOW + timedelta(days=40),
                                                       {"thumbprint": THUMB.hex()})  # fmt: skip
    assert store.reads == []  # properties only


def test_a_vault_that_refuses_the_listing_raises_the_mapped_auth_error() -> None:
    store = FakeSecretStore()
    store.fail("list_certificates", 403, "Forbidden", inner="ForbiddenByRbac")
    with pytest.raises(AuthError) as denied:
        vault_credentials(store, "kv-test")
    assert denied.value.code == "ForbiddenByRbac"


# -- Entra ---------------------------------------------------------------------------------------------
def graph_app(**fields: Any) -> dict[str, Any]:
    return {"appId": APP, "displayName": "partner-sync", **fields}


def test_entra_passwords_and_certificates_with_their_end_dates() -> None:
    app = graph_app(
        passwordCredentials=[
            {"keyId": KEY, "displayName": "current", "endDateTime": "2026-04-01T00:00:00Z",
             "startDateTime": "2025-04-01T00:00:00Z", "hint": "abc"},
            {"keyId": "k-no-name", "displayName": None, "endDateTime": "2026-05-01T10:30:00.1234567Z"},
            {"keyId": "k-no-end", "endDateTime": None},
        ],
        keyCredentials=[
            {"keyId": "c1", "displayName": "CN=partner", "endDateTime": "2027-01-01T00:00:00Z",
             "customKeyIdentifier": base64.b64encode(THUMB).decode()},
            {"keyId": "c2", "endDateTime": "2027-01-01T00:00:00", "customKeyIdentifier": "not base64!"},
        ],
    )  # fmt: skip
    found = {c.id: c for c in entra_credentials([app])}
    current = found[f"entra-password:{APP}:{KEY}"]
    assert (current.name, current.source, current.hint, current.key_id) == ("current", "entra-password", "abc", KEY)
    assert current.expires_on == datetime(2026, 4, 1, tzinfo=UTC)
    assert current.created_on == datetime(2025, 4, 1, tzinfo=UTC)
    assert current.owner == f"app partner-sync ({APP})"
    assert found[f"entra-password:{APP}:k-no-name"].name == "k-no-name"
    assert found[f"entra-password:{APP}:k-no-name"].expires_on == datetime(2026, 5, 1, 10, 30, 0, 123456, tzinfo=UTC)
    assert found[f"entra-password:{APP}:k-no-end"].expires_on is None
    cert = found[f"entra-certificate:{APP}:c1"]
    assert (cert.source, cert.extra) == ("entra-certificate", {"app_id": APP, "thumbprint": THUMB.hex()})
    naive = found[f"entra-certificate:{APP}:c2"]  # no zone: read as UTC; an undecodable thumbprint is left out
    assert (naive.expires_on, naive.extra) == (datetime(2027, 1, 1, tzinfo=UTC), {"app_id": APP})


def test_an_app_without_credentials_lists_nothing() -> None:
    assert entra_credentials([graph_app(passwordCredentials=None, keyCredentials=[])]) == []


def test_the_graph_reader_lists_named_apps_or_every_app_across_pages() -> None:
    http = FakeHttp()
    graph = FakeGraph(http, page_size=2)
    for n in range(5):
        graph.add_app(f"app-{n}", f"App {n}", password_credentials=[{"keyId": f"k{n}", "endDateTime": iso(NOW)}])
    reader = graph.reader(http)
    assert [c.id for c in entra_credentials(reader.applications(["app-3"]))] == ["entra-password:app-3:k3"]
    assert len(entra_credentials(reader.applications(["*"]))) == 5
    assert [r.query.get("$skiptoken") for r in http.requests[1:]] == [None, "2", "4"]


def test_a_deleted_app_in_the_list_fails_the_graph_listing_with_graphs_code() -> None:
    http = FakeHttp()
    graph = FakeGraph(http)
    graph.add_app("app-0", "App 0")
    with pytest.raises(AuthError) as gone:
        entra_credentials(graph.reader(http).applications(["app-0", "deleted"]))
    assert (gone.value.code, gone.value.step) == ("Request_ResourceNotFound", "graph")


# -- drift ---------------------------------------------------------------------------------------------
def entra(key_id: str = KEY, ends: datetime | None = NOW, created: datetime | None = NOW - timedelta(days=300),
          hint: str | None = "abc", name: str = "current") -> Credential:  # fmt: skip
    return Credential(f"entra-password:{APP}:{key_id}", name, "entra-password", ends, f"app partner-sync ({APP})",
                      key_id=key_id, hint=hint, created_on=created)  # fmt: skip


def copy(expires: datetime | None, key_id: str | None = KEY, name: str = "partner") -> Credential:
    return Credential(f"kv-secret:kv:{name}", name, "keyvault-secret", expires, "vault kv", key_id=key_id)


def test_a_tagged_copy_within_the_tolerance_is_not_drift_beyond_it_is() -> None:
    assert drift_findings([entra(), copy(NOW + timedelta(hours=23))], tolerance_s=86400) == []
    (finding,) = drift_findings([entra(), copy(NOW + timedelta(days=400))], tolerance_s=86400)
    assert finding.entra == entra()
    assert "says it expires 2027-04-05" in finding.text
    assert f"(keyId {KEY}) ends 2026-03-01" in finding.text
    (no_expiry,) = drift_findings([entra(), copy(None)])
    assert "says it expires no expiry" in no_expiry.text


def test_a_copy_tagged_with_a_key_id_no_app_has_is_drift() -> None:
    (finding,) = drift_findings([entra(), copy(NOW, key_id="mistyped")])
    assert finding.entra is None
    assert "entraKeyId=mistyped, which no app registration has" in finding.text


def test_an_untagged_copy_matches_by_its_unique_hint_only() -> None:
    untagged = copy(NOW + timedelta(days=400), key_id=None)
    assert drift_findings([entra(), untagged]) == []  # no hint given: no match, no finding
    assert len(drift_findings([entra(), untagged], hints={"partner": "abc"})) == 1
    twins = [entra(), entra(key_id="other", hint="abc"), untagged]
    assert drift_findings(twins, hints={"partner": "abc"}) == []  # ambiguous: no guess


def test_an_app_with_a_newer_secret_than_the_copy_is_drift() -> None:
    newer = entra(key_id="k-new", created=NOW - timedelta(days=1), name="rotated")
    (finding,) = drift_findings([entra(), newer, copy(NOW)])
    assert "the app has a newer secret rotated (keyId k-new, created 2026-02-28)" in finding.text
    assert drift_findings([entra(), copy(NOW)]) == []


def test_entra_without_an_end_date_is_not_drift() -> None:
    assert drift_findings([entra(ends=None), copy(NOW)]) == []
