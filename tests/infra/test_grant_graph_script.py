"""infra/scripts/grant-graph-permission.sh, run against a stand-in ``az`` (tests/infra/az_stub.py) on PATH.

What ARM cannot grant, the script does: Graph's Application.Read.All (the expiry sweep reads registrations,
possibly others than the Dataverse one) and, for rotation, Application.ReadWrite.OwnedBy plus ownership of the
Dataverse app registration (OwnedBy reaches only registrations the identity owns). Each step is checked first:
a second run, or a run where everything is in place, writes nothing. No tenant-wide write permission
(``*.ReadWrite.All``) appears anywhere in infra/, and that check is seen to catch one planted in a copy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.devstack_process import ROOT
from tests.infra.planting import planted_copy

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
SCRIPT = INFRA / "scripts" / "grant-graph-permission.sh"
STUB = Path(__file__).with_name("az_stub.py")
GRAPH = "https://graph.microsoft.com/v1.0"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
APPLICATION_READ_ALL = "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30"  # Microsoft Graph permissions reference
APPLICATION_READWRITE_OWNEDBY = "18a4783c-866b-4cc7-a460-3d5e5662c884"  # likewise
TENANT_WIDE_WRITES = {  # app role ids of Graph permissions the identity must never get (permissions reference)
    "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9": "Application.ReadWrite.All",
    "19dbc75e-c2e2-444c-a770-ec69d8559fc7": "Directory.ReadWrite.All",
    "06b708a9-e830-4db3-a914-8e69da51d44f": "AppRoleAssignment.ReadWrite.All",
}
TENANT_WIDE_NAME = re.compile(r"\w+\.ReadWrite\.All")
GRAPH_SP = "5c1a0000-0000-0000-0000-00000000a001"  # Microsoft Graph's service principal in the tenant
PRINCIPAL = "2c8e4a6b-3f1d-4d7b-8a9c-5e1f3b7d9a22"  # the app's managed identity
CLIENT_ID = "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11"  # the Dataverse app registration's appId
APP_OBJECT_ID = "7e4d0000-0000-0000-0000-00000000b002"  # its object id
ADMIN = "9f000000-0000-0000-0000-00000000c003"  # a person who already owns the registration
ENV = {"AZURE_APP_PRINCIPAL_ID": PRINCIPAL, "DATAVERSE_CLIENT_ID": CLIENT_ID}


def assignment(app_role_id: str, resource_id: str = GRAPH_SP) -> dict[str, str]:
    return {"appRoleId": app_role_id, "resourceId": resource_id}


def world(roles: list[dict[str, str]] | None = None, owners: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "service_principals": {GRAPH_APP_ID: GRAPH_SP},
        "applications": {CLIENT_ID: {"id": APP_OBJECT_ID, "owners": [ADMIN, *(owners or [])]}},
        "app_role_assignments": {PRINCIPAL: list(roles or [])},
        **extra,
    }


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    state: dict[str, Any]

    def writes(self) -> list[tuple[str, str]]:
        """(url, body) of each POST the script made."""
        found = []
        for call in self.calls:
            args = dict(zip(call[1::2], call[2::2], strict=False)) if call[:1] == ["rest"] else {}
            if args.get("--method") == "POST":
                found.append((args["--url"], args["--body"]))
        return found


class Stub:
    """A directory with an ``az`` that runs az_stub.py on a state file, and a log of its calls."""

    def __init__(self, tmp_path: Path, state: dict[str, Any]) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state_file, self.log = tmp_path / "az-state.json", tmp_path / "az-calls.jsonl"
        self.state_file.write_text(json.dumps(state))
        az = self.bin / "az"
        az.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STUB}" "$@"\n')
        az.chmod(0o755)

    def run(self, env: dict[str, str], script: Path = SCRIPT) -> Run:
        self.log.write_text("")
        completed = subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(self.bin.parent),
                 "AZ_STUB_STATE": str(self.state_file), "AZ_STUB_LOG": str(self.log), **env},
        )  # fmt: skip
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        state = json.loads(self.state_file.read_text())
        return Run(completed.returncode, completed.stdout, completed.stderr, calls, state)


def role_grant(app_role_id: str) -> tuple[str, str]:
    body = {"principalId": PRINCIPAL, "resourceId": GRAPH_SP, "appRoleId": app_role_id}
    return f"{GRAPH}/servicePrincipals/{PRINCIPAL}/appRoleAssignments", json.dumps(body, separators=(",", ":"))


OWNER_ADDED = (
    f"{GRAPH}/applications/{APP_OBJECT_ID}/owners/$ref",
    f'{{"@odata.id":"{GRAPH}/directoryObjects/{PRINCIPAL}"}}',
)


def test_a_fresh_identity_gets_both_roles_and_the_ownership_and_a_second_run_writes_nothing(tmp_path: Path) -> None:
    stub = Stub(tmp_path, world())
    first = stub.run(ENV)
    assert first.returncode == 0, first.stderr
    assert first.writes() == [role_grant(APPLICATION_READ_ALL), role_grant(APPLICATION_READWRITE_OWNEDBY), OWNER_ADDED]
    assert first.state["app_role_assignments"][PRINCIPAL] == [
        assignment(APPLICATION_READ_ALL), assignment(APPLICATION_READWRITE_OWNEDBY),
    ]  # fmt: skip
    assert first.state["applications"][CLIENT_ID]["owners"] == [ADMIN, PRINCIPAL]  # the admin stays an owner
    again = stub.run(ENV)
    assert again.returncode == 0, again.stderr
    assert again.writes() == []
    assert again.state == first.state
    assert "already granted" in again.stdout
    assert "already owns" in again.stdout


def test_nothing_is_written_when_everything_is_in_place(tmp_path: Path) -> None:
    stub = Stub(
        tmp_path, world([assignment(APPLICATION_READ_ALL), assignment(APPLICATION_READWRITE_OWNEDBY)], [PRINCIPAL])
    )
    done = stub.run(ENV)
    assert done.returncode == 0, done.stderr
    assert done.writes() == []
    reads = [call for call in done.calls if call[:1] == ["rest"]]
    assert len(reads) == 3  # the role assignments twice, the owners once


@pytest.mark.parametrize(
    ("roles", "owners", "expected"),
    [
        ([assignment(APPLICATION_READ_ALL)], [], [role_grant(APPLICATION_READWRITE_OWNEDBY), OWNER_ADDED]),
        ([assignment(APPLICATION_READ_ALL), assignment(APPLICATION_READWRITE_OWNEDBY)], [], [OWNER_ADDED]),
        ([], [PRINCIPAL], [role_grant(APPLICATION_READ_ALL), role_grant(APPLICATION_READWRITE_OWNEDBY)]),
        # the same app role id on another API's service principal is not Graph's
        ([assignment(APPLICATION_READWRITE_OWNEDBY, "another-api")], [PRINCIPAL],
         [role_grant(APPLICATION_READ_ALL), role_grant(APPLICATION_READWRITE_OWNEDBY)]),
    ],
    ids=["Read.All held", "both roles held", "already an owner", "a role of another API"],
)  # fmt: skip
def test_only_what_is_missing_is_granted(
    tmp_path: Path, roles: list[dict[str, str]], owners: list[str], expected: list[tuple[str, str]]
) -> None:
    done = Stub(tmp_path, world(roles, owners)).run(ENV)
    assert done.returncode == 0, done.stderr
    assert done.writes() == expected


@pytest.mark.parametrize("value", ["false", "FALSE", "0", "no"])
def test_with_rotation_off_only_the_read_permission_is_granted(tmp_path: Path, value: str) -> None:
    env = {"AZURE_APP_PRINCIPAL_ID": PRINCIPAL, "ROTATION_ENABLED": value}  # no DATAVERSE_CLIENT_ID needed
    done = Stub(tmp_path, world()).run(env)
    assert done.returncode == 0, done.stderr
    assert done.writes() == [role_grant(APPLICATION_READ_ALL)]
    assert not any(call[:2] == ["ad", "app"] for call in done.calls)
    assert "left out" in done.stdout


def test_the_system_identity_variable_still_works(tmp_path: Path) -> None:
    done = Stub(tmp_path, world()).run({"AZURE_PRINCIPAL_ID": PRINCIPAL, "DATAVERSE_CLIENT_ID": CLIENT_ID})
    assert done.returncode == 0, done.stderr
    assert done.writes()[0] == role_grant(APPLICATION_READ_ALL)


@pytest.mark.parametrize(
    ("env", "named"),
    [({"DATAVERSE_CLIENT_ID": CLIENT_ID}, "AZURE_APP_PRINCIPAL_ID"), ({"AZURE_APP_PRINCIPAL_ID": PRINCIPAL}, "client")],
    ids=["no principal", "no client id"],
)
def test_a_missing_input_stops_it_before_any_call(tmp_path: Path, env: dict[str, str], named: str) -> None:
    done = Stub(tmp_path, world()).run(env)
    assert done.returncode != 0
    assert named in done.stderr
    assert done.calls == []


def test_a_refused_write_fails_the_script_and_claims_nothing(tmp_path: Path) -> None:
    refuse = {f"POST {OWNER_ADDED[0]}": "Authorization_RequestDenied: Insufficient privileges"}
    done = Stub(tmp_path, world(refuse=refuse)).run(ENV)
    assert done.returncode != 0
    assert "Insufficient privileges" in done.stderr
    assert "now owns" not in done.stdout


def test_the_stub_refuses_a_duplicate_as_graph_does(tmp_path: Path) -> None:
    # What makes the idempotence tests mean something: a script that always POSTs fails on the second run.
    always_posts = tmp_path / "always-posts.sh"
    always_posts.write_text(
        f'az rest --method POST --url "{role_grant(APPLICATION_READ_ALL)[0]}" '
        f"--headers Content-Type=application/json --body '{role_grant(APPLICATION_READ_ALL)[1]}' --output none\n"
    )
    stub = Stub(tmp_path, world())
    assert stub.run(ENV, always_posts).returncode == 0
    second = stub.run(ENV, always_posts)
    assert second.returncode != 0
    assert "already exists" in second.stderr


# -- no tenant-wide write permission -------------------------------------------------------------------------------
def tenant_wide_writes(root: Path) -> list[str]:
    """Every mention of a ``*.ReadWrite.All`` Graph permission, by name or app role id, in the files under root."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        where = path.relative_to(root).as_posix()
        found += [f"{where}: {match}" for match in TENANT_WIDE_NAME.findall(text)]
        found += [f"{where}: {guid} ({name})" for guid, name in TENANT_WIDE_WRITES.items() if guid in text.lower()]
    return found


def test_no_tenant_wide_write_permission_anywhere_in_infra() -> None:
    assert tenant_wide_writes(INFRA) == []


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ((APPLICATION_READWRITE_OWNEDBY, "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9"), "(Application.ReadWrite.All)"),
        (("grant_app_role \"$APPLICATION_READWRITE_OWNEDBY\" Application.ReadWrite.OwnedBy",
          "grant_app_role \"$APPLICATION_READWRITE_OWNEDBY\" Application.ReadWrite.All"),
         ": Application.ReadWrite.All"),
    ],
    ids=["by app role id", "by name"],
)  # fmt: skip
def test_a_planted_tenant_wide_permission_is_caught(tmp_path: Path, edit: tuple[str, str], named: str) -> None:
    copy = planted_copy(tmp_path, "scripts/grant-graph-permission.sh", [edit])
    found = tenant_wide_writes(copy)
    assert len(found) == 1, found
    assert found[0].startswith("scripts/grant-graph-permission.sh: "), found
    assert named in found[0], found


def test_the_script_names_the_app_roles_by_their_published_ids() -> None:
    constants = dict(re.findall(r"^([A-Z_]+)=([0-9a-f-]{36})\b", SCRIPT.read_text(), re.MULTILINE))
    assert constants == {
        "GRAPH_APP_ID": GRAPH_APP_ID,
        "APPLICATION_READ_ALL": APPLICATION_READ_ALL,
        "APPLICATION_READWRITE_OWNEDBY": APPLICATION_READWRITE_OWNEDBY,
    }
