"""Issue 20, acceptance 1, 3 and 4: the app rotates its own Dataverse credential through the local host and
devstack's Entra, Graph and Key Vault: a client secret 25 days from its end date, a certificate Key Vault has
renewed, and the failures that must leave the old credential working (Graph down, Key Vault down at the
store, a new secret Entra keeps refusing)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.devstack_process import DevstackProcess
from tests.e2e.rotation_world import (
    CERTIFICATE_STEPS,
    GRACE_S,
    SECRET,
    SECRET_STEPS,
    Sampler,
    digest,
    entra_view,
    phase_is,
    rotation,
    rotation_notices,
    run_timer,
    start_host,
    start_stack,
    token_error,
    vault_client,
    wait_for,
)
from tests.integration.test_expiry import received

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secret_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    stack = start_stack(tmp_path_factory.mktemp("rotation"), "rotation")
    yield stack
    stack.stop()


def upload_accounts(stack: DevstackProcess, rows: int = 5) -> str:
    from azure.storage.blob import BlobServiceClient

    tag = uuid.uuid4().hex[:5]
    text = "CustomerNo;Name;Category\n" + "".join(f"R{tag}{i};Rot {i};Standard\n" for i in range(rows))
    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "erp-import"
    )
    if not container.exists():
        container.create_container()
    container.upload_blob(f"accounts/{tag}.csv", text.encode(), overwrite=True)
    return tag


def disabled(client: Any, name: str, version: str) -> bool:
    from azure.core.exceptions import HttpResponseError

    try:
        client.get_secret(name, version)
    except HttpResponseError as exc:
        return exc.status_code == 403 and "disabled" in str(exc).lower()
    return False


def test_a_secret_25_days_from_its_end_is_rotated_by_the_sweep(secret_stack: DevstackProcess, app_env) -> None:
    stack = secret_stack
    app_env(stack)
    client = vault_client(stack)
    old = client.get_secret(SECRET)
    old_value = old.value or ""
    assert token_error(stack, old_value) is None
    sampler = Sampler(stack)
    sampler.start()
    host = start_host(stack, "rotation")
    try:
        run_timer(host, "expiry_sweep")  # the old secret is alerted at 30 days: its removal is announced later
        switched = wait_for("the switch", phase_is(host, "switched", "retired"))
        assert switched["reason"] == "sweep"

        upload_accounts(stack)
        run = host.post("/api/sync/accounts/run", timeout=120)
        assert run.status_code == 200, run.text
        assert (run.json()["status"], run.json()["written"]) == ("succeeded", 5), "a sync run during the rotation"

        passwords = {p["key_id"]: p for p in entra_view(stack)["passwords"]}
        new = passwords[switched["new_key_id"]]
        end = datetime.fromisoformat(new["end"].replace("Z", "+00:00"))
        assert abs(end - (datetime.now(UTC) + timedelta(days=180))) < timedelta(hours=1), "the configured lifetime"
        latest = client.get_secret(SECRET)
        assert digest(latest.value or "") == new["value_sha256"], "Key Vault's latest version holds the new value"
        assert latest.properties.expires_on == end.replace(microsecond=0)
        assert latest.properties.tags == {"entraKeyId": new["key_id"], "rotationId": switched["rotation_id"]}
        assert latest.properties.content_type == "text/plain"

        done = wait_for("the retire", phase_is(host, "retired"), timeout_s=GRACE_S * 6)
        assert done["rotation_id"] == switched["rotation_id"]
        assert [p["key_id"] for p in entra_view(stack)["passwords"]] == [new["key_id"]], "the old password is gone"
        refused = token_error(stack, old_value)
        assert refused is not None
        assert "AADSTS7000215" in refused
        assert disabled(client, SECRET, old.properties.version or ""), "the old Key Vault version is disabled"
    finally:
        notices = rotation_notices(stack, until="retired")
        run_timer(host, "expiry_sweep")  # Entra's old password is gone: its alerts are closed
        host.stop()
        sampler.stop()
    assert [n["level"] for n in notices] == SECRET_STEPS, "one notice per step"
    assert all(old_value not in str(n) and (latest.value or "-") not in str(n) for n in notices)
    removed = [a for a in received(stack) if a["kind"] == "resolved" and "was removed" in a["title"]]
    old_key = old.properties.tags["entraKeyId"]
    assert [a["credential"]["id"] for a in removed if a["credential"]["source"] == "entra-password"] == [
        f"entra-password:{stack.env['DATAVERSE_CLIENT_ID']}:{old_key}"
    ], "the credential-removed notice for the old Entra password"
    assert sampler.samples >= 10
    assert sampler.failures == [], "a fresh token with Key Vault's current value never failed"


@pytest.fixture(scope="module")
def certificate_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    stack = start_stack(tmp_path_factory.mktemp("certrotation"), "certrotation", certificate=True)
    yield stack
    stack.stop()


def test_a_certificate_renewed_by_key_vault_is_uploaded_verified_and_the_old_one_removed(
    certificate_stack: DevstackProcess, app_env
) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    stack = certificate_stack
    app_env(stack)
    # The function app's own identity (Key Vault Certificate User): rotation-admin may only write secrets.
    certificates = CertificateClient(stack.env["KEY_VAULT_URL"], ManagedIdentityCredential(),
                                     verify_challenge_resource=False)  # fmt: skip
    before = certificates.get_certificate("dataverse-cert")
    old_keys = entra_view(stack)["keys"]
    # local.settings.json.example names the secret; the environment wins over it, as with Core Tools.
    host = start_host(stack, "certrotation", DATAVERSE_CLIENT_SECRET_NAME="")
    try:
        assert rotation(host) == {} or rotation(host).get("phase") != "switched"
        stack.control("keyvault", {"renew_certificate": "dataverse-cert"})  # its lifetime action, now
        renewed = certificates.get_certificate("dataverse-cert")
        assert renewed.properties.version != before.properties.version
        thumbprint = (renewed.properties.x509_thumbprint or b"").hex().upper()
        switched = wait_for("the switch", phase_is(host, "switched", "retired"))
        keys = {k["thumbprint"]: k for k in entra_view(stack)["keys"]}
        assert thumbprint in keys, "addKey uploaded the renewed certificate"
        assert len(keys) == len(old_keys) + 1
        upload_accounts(stack, rows=3)
        run = host.post("/api/sync/accounts/run", timeout=120)
        assert run.status_code == 200, run.text
        assert run.json()["status"] == "succeeded", "a sync run with the new certificate"
        wait_for("the retire", phase_is(host, "retired"), timeout_s=GRACE_S * 6)
        assert [k["thumbprint"] for k in entra_view(stack)["keys"]] == [thumbprint], "removeKey of the old one"
        assert switched["new_version"] == renewed.properties.version
    finally:
        notices = rotation_notices(stack, until="retired")
        host.stop()
    assert [n["level"] for n in notices] == CERTIFICATE_STEPS


@pytest.fixture(scope="module")
def failure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    stack = start_stack(tmp_path_factory.mktemp("rotationfail"), "rotationfail")
    yield stack
    stack.stop()


FAILURE_ROWS = {
    # name: (how devstack fails, the failed step, what the alert names)
    "graph_503_at_add_password": (
        ("entra", "/_devstack/control", {"fail_graph_writes": {"count": 20, "status": 503, "retry_after_s": 0}}),
        "add", "503",
    ),
    "key_vault_down_at_the_store": (
        ("keyvault", "/_devstack/outage", {"seconds": 120, "methods": ["PUT"], "path_contains": "/secrets/"}),
        "store", "KeyVaultUnavailable",
    ),
    "new_secret_refused_past_the_deadline": (
        ("entra", "/_devstack/control", {"credential_propagation_s": 10_000}),
        "verify", "AADSTS7000215",
    ),
}  # fmt: skip
UNDO = {
    "entra": ("/_devstack/control", {"fail_graph_writes": {"count": 0}, "credential_propagation_s": 3}),
    "keyvault": ("/_devstack/outage", {"seconds": 0}),
}


@pytest.mark.parametrize("row", sorted(FAILURE_ROWS))
def test_a_failed_rotation_keeps_the_old_credential_and_names_the_cause(
    row: str, failure_stack: DevstackProcess, app_env, tmp_path: Path
) -> None:
    stack = failure_stack
    app_env(stack)
    (server, path, fault), step, named = FAILURE_ROWS[row]
    before = {p["key_id"] for p in entra_view(stack)["passwords"]}
    current = vault_client(stack).get_secret(SECRET)
    host = start_host(stack, f"rotationfail-{row}", ROTATION_SCHEDULE=NEVER_SCHEDULE)
    seen = len(rotation_notices(stack))
    try:
        stack._call(server, path, fault)
        started = host.post("/api/rotation/start", timeout=VERIFY_WAIT_S, key=host.master_key())
        assert started.status_code == 200, started.text
        body = started.json()
        assert body["outcome"] == "failed", body
        assert body["rotation"]["failed_step"] == step
    finally:
        stack._call(server, *UNDO[server])
        host.stop()
    assert {p["key_id"] for p in entra_view(stack)["passwords"]} == before, "no credential left behind in Entra"
    latest = vault_client(stack).get_secret(SECRET)
    assert latest.value == current.value, "Key Vault's latest version is the old secret"
    assert token_error(stack, latest.value or "") is None, "the old credential still works"
    failed = [n for n in rotation_notices(stack, until="failed", after=seen)[seen:] if n["level"] == "failed"]
    assert len(failed) == 1, failed
    assert named in failed[0]["title"] + failed[0]["text"], failed
    assert failed[0]["fix"], "the alert says what to do"


NEVER_SCHEDULE = "0 0 0 1 1 *"
VERIFY_WAIT_S = 120


@pytest.fixture(scope="module")
def event_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    stack = start_stack(tmp_path_factory.mktemp("rotationevent"), "rotationevent")
    yield stack
    stack.stop()


def near_expiry_event(stack: DevstackProcess, name: str, version: str, expires: datetime) -> dict[str, Any]:
    """Key Vault's SecretNearExpiry as Event Grid delivers it (devstack's vault_events sends the same shape)."""
    return {
        "id": str(uuid.uuid4()), "topic": stack.env["KEY_VAULT_RESOURCE_ID"], "subject": name,
        "eventType": "Microsoft.KeyVault.SecretNearExpiry", "eventTime": datetime.now(UTC).isoformat(),
        "data": {"Id": f"{stack.env['KEY_VAULT_URL']}/secrets/{name}/{version}", "VaultName": "dvbridge-dev",
                 "ObjectType": "Secret", "ObjectName": name, "Version": version, "NBF": None,
                 "EXP": int(expires.timestamp())},
        "dataVersion": "1", "metadataVersion": "1",
    }  # fmt: skip


def test_key_vaults_near_expiry_event_for_the_secret_starts_the_rotation(event_stack: DevstackProcess, app_env) -> None:
    stack = event_stack
    app_env(stack)
    current = vault_client(stack).get_secret(SECRET)
    host = start_host(stack, "rotationevent", ROTATION_SCHEDULE=NEVER_SCHEDULE)  # only the event can start it
    try:
        code = json.loads((stack.directory / "host-keys.json").read_text())["systemKeys"]["eventgrid_extension"]

        def deliver(name: str) -> None:
            event = near_expiry_event(stack, name, current.properties.version or "",
                                      current.properties.expires_on or datetime.now(UTC))  # fmt: skip
            answer = requests.post(
                f"{host.url}/runtime/webhooks/eventgrid", params={"functionName": "expiry_event", "code": code},
                headers={"aeg-event-type": "Notification"}, json=[event], timeout=VERIFY_WAIT_S,
            )  # fmt: skip
            assert answer.status_code in (200, 202), answer.text

        deliver("erp-api-key")  # another secret near its end: alerted, not rotated
        assert rotation(host) == {}, "no rotation for a secret that is not the Dataverse credential"
        deliver(SECRET)
        switched = wait_for("the switch", phase_is(host, "switched", "retired"))
        assert switched["reason"] == "event"
        assert switched["new_key_id"] in {p["key_id"] for p in entra_view(stack)["passwords"]}
    finally:
        host.stop()
