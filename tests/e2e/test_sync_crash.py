"""Acceptance 2 of issue 6: SIGKILL the host mid-run, restart it; the next run completes and the store is
exactly right: nothing lost, nothing duplicated."""

from __future__ import annotations

import contextlib
import csv
import io
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

ROWS = 20_000
LEASE_S = 15  # the shortest blob lease: a killed run frees the job this fast


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("crash"),
        "crash",
        "--memory",
        "--time-scale",
        "0.05",
    )
    yield process
    process.stop()


def start_host(stack: DevstackProcess) -> HostProcess:
    return HostProcess(stack, "sync_crash", {"SYNC_LEASE_DURATION_S": str(LEASE_S)})


def count_accounts(stack: DevstackProcess) -> dict[str, int]:
    api = api_for(stack)
    seen: dict[str, int] = {}
    link: str | None = f"{api.root}/accounts?$select=accountnumber&$filter=startswith(accountnumber,'K')"
    while link:
        page = api("GET", link).json()
        for row in page["value"]:
            seen[row["accountnumber"]] = seen.get(row["accountnumber"], 0) + 1
        link = page.get("@odata.nextLink")
    return seen


def test_sigkill_mid_run_then_restart(stack: DevstackProcess, app_env) -> None:
    from azure.storage.blob import BlobServiceClient

    app_env(stack)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(["CustomerNo", "Name"])
    writer.writerows([f"K{i:06}", f"Crash test {i}"] for i in range(ROWS))
    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "erp-import"
    )
    if not container.exists():
        container.create_container()
    container.upload_blob("accounts/crash.csv", buffer.getvalue().encode(), overwrite=True)

    host = start_host(stack)

    def doomed_run() -> None:
        with contextlib.suppress(requests.ConnectionError):  # this host is about to be killed mid-request
            host.post("/api/sync/accounts/run", timeout=600)

    threading.Thread(target=doomed_run, daemon=True).start()
    deadline = time.monotonic() + 120
    while len(count_accounts(stack)) < ROWS // 5:  # well into the run
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.2)
    host.kill()
    partial = len(count_accounts(stack))
    assert 0 < partial < ROWS

    host = start_host(stack)
    try:
        deadline = time.monotonic() + LEASE_S + 120
        while True:
            r = host.post("/api/sync/accounts/run", timeout=600)
            if r.status_code == 200:
                break
            assert r.status_code == 409, r.text  # the killed run's lease has not expired yet
            assert time.monotonic() < deadline
            time.sleep(2)
        report = r.json()
        assert report["status"] == "succeeded"
        assert report["written"] + report["unchanged"] == ROWS
    finally:
        host.stop()
    final = count_accounts(stack)
    assert len(final) == ROWS  # nothing lost
    assert set(final.values()) == {1}  # nothing duplicated
