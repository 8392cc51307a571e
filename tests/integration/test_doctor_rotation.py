"""The doctor's rotation readiness step against devstack (issue 20): the default world, where the function app's
identity owns dvbridge-sync, holds Application.ReadWrite.OwnedBy and Key Vault Secrets Officer scoped to the
Dataverse secret, passes; three copies of it (tests/integration/scenarios/rotation-*.yaml), each with one of those
rights taken away, fail the step naming exactly that piece, through devstack's Graph (token roles, owners) and
its ARM ("Permissions - List For Resource")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.identity.doctor import run_doctor
from shared.identity.doctor_report import DoctorReport, StepResult
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).parent / "scenarios"
WORLDS = {
    "ready": ROOT / "devstack" / "scenarios" / "default.yaml",
    "no-graph-permission": SCENARIOS / "rotation-no-graph-permission.yaml",
    "not-owner": SCENARIOS / "rotation-not-owner.yaml",
    "no-key-vault-role": SCENARIOS / "rotation-no-key-vault-role.yaml",
}
APP = "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11"  # dvbridge-sync
IDENTITY_OID = "2c8e4a6b-3f1d-4d7b-8a9c-5e1f3b7d9a22"  # the function app's system-assigned identity
SECRET = "dataverse-client-secret"
CHAIN = ["settings", "managed identity", "key vault", "credential", "credential expiry", "entra token",
         "token claims", "whoami", "privileges", "rotation readiness"]  # fmt: skip


class Worlds:
    """One devstack per scenario, started when a test first asks for it, stopped at the module's end."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._started: dict[str, DevstackProcess] = {}

    def __call__(self, name: str) -> DevstackProcess:
        if name not in self._started:
            directory = self._tmp.mktemp(f"rotation-{name}")
            self._started[name] = DevstackProcess(WORLDS[name], directory, f"rotation-{name}", "--no-azurite",
                                                  "--memory")  # fmt: skip
        return self._started[name]

    def stop(self) -> None:
        for process in self._started.values():
            process.stop()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    started = Worlds(tmp_path_factory)
    yield started
    started.stop()


def doctor(worlds: Worlds, app_env: Any, name: str, **overrides: str) -> tuple[DoctorReport, StepResult]:
    app_env(worlds(name), **overrides)
    report = run_doctor()
    assert [s.name for s in report.steps] == CHAIN
    return report, report.steps[-1]


def missing(step: StepResult) -> list[str]:
    return [e["code"] for e in step.details["missing"]]


def writes(stack: DevstackProcess) -> list[str]:
    """Requests to Graph's applications or to Key Vault that were not reads."""
    found = []
    for server in ("DEVSTACK_ENTRA_URL", "DEVSTACK_KEY_VAULT_URL"):
        url = f"{stack.env[server]}/_devstack/stats"
        stats = requests.get(url, verify=stack.env["REQUESTS_CA_BUNDLE"], timeout=10).json()
        for route in stats["requests"]:
            method, _, path = route.partition(" ")
            if method != "GET" and (server == "DEVSTACK_KEY_VAULT_URL" or "applications" in path):
                found.append(route)
    return found


def test_the_default_world_is_ready_for_rotation(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "ready")
    assert report.ok, report.render()
    assert (step.status, step.code) == ("ok", None), report.render()
    assert step.details["checked"] == ["Graph Application.ReadWrite.OwnedBy", f"owner of {APP}",
                                       f"Key Vault write scoped to secret {SECRET}"]  # fmt: skip
    assert step.details["object_id"] == IDENTITY_OID
    assert "Application.ReadWrite.OwnedBy" in step.details["graph_roles"]
    assert writes(worlds("ready")) == []  # the step changed nothing


def test_without_the_graph_permission_the_step_names_it(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "no-graph-permission")
    assert report.ok, report.render()  # the chain works; rotation could not run
    assert step.status == "warn", report.render()
    assert missing(step) == ["RotationGraphPermissionMissing"]
    assert "Application.Read.All" in (step.cause or "")
    assert "infra/scripts/grant-graph-permission.sh" in (step.fix or "")
    assert "Application.ReadWrite.OwnedBy" in (step.fix or "")


def test_without_ownership_the_step_names_it(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "not-owner")
    assert report.ok, report.render()
    assert step.status == "warn", report.render()
    assert missing(step) == ["RotationNotOwner"]
    assert IDENTITY_OID in (step.cause or "")
    assert f"az ad app owner add --id {APP} --owner-object-id {IDENTITY_OID}" in (step.fix or "")


def test_without_the_key_vault_role_the_step_names_it(worlds: Worlds, app_env: Any) -> None:
    stack = worlds("no-key-vault-role")
    report, step = doctor(worlds, app_env, "no-key-vault-role")
    assert report.ok, report.render()
    assert step.status == "warn", report.render()
    assert missing(step) == ["RotationKeyVaultRoleMissing"]
    assert "Microsoft.KeyVault/vaults/secrets/setSecret/action" in (step.cause or "")
    assert f"--scope {stack.env['KEY_VAULT_RESOURCE_ID']}/secrets/{SECRET}" in (step.fix or "")


def test_without_the_vault_resource_id_the_key_vault_role_is_a_warning(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "ready", KEY_VAULT_RESOURCE_ID="")
    assert report.ok
    assert (step.status, step.code) == ("warn", "RotationKeyVaultNotChecked")
    assert "KEY_VAULT_RESOURCE_ID is not set" in (step.cause or "")


def test_rotation_switched_off_skips_the_step(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "no-key-vault-role", ROTATION_ENABLED="false")
    assert report.ok
    assert (step.status, step.summary) == (
        "skip",
        "skipped: ROTATION_ENABLED=false (the credential is rotated by hand)",
    )


def test_a_certificate_credential_is_ready_in_the_default_world(worlds: Worlds, app_env: Any) -> None:
    report, step = doctor(worlds, app_env, "ready", DATAVERSE_CLIENT_SECRET_NAME="",
                          DATAVERSE_CERTIFICATE_NAME="dataverse-cert")  # fmt: skip
    assert step.status == "ok", report.render()
    assert any("registered and valid in Entra" in c for c in step.details["checked"])
    assert "Key Vault read of certificate dataverse-cert's versions" in step.details["checked"]
