"""Acceptance 3 of issue 6: 100k rows fanned out over two host processes sharing one Azurite queue:
the store is exactly right and the run report's totals add up."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator

import pytest
import requests

from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

ROWS = 100_000
# Each host takes one work item at a time (host.json overridden by app settings, as in Azure), so both share.
ONE_CHUNK_AT_A_TIME = {
    "AzureFunctionsJobHost__extensions__queues__batchSize": "1",
    "AzureFunctionsJobHost__extensions__queues__newBatchThreshold": "0",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("fan"),
        "fan",
        "--memory",
        "--time-scale",
        "0.05",
    )
    yield process
    process.stop()


def chunks_done(host: HostProcess) -> int:
    return sum("Executed 'Functions.sync_chunk' (Succeeded" in line for line in host.lines)


def test_fan_out_over_two_hosts(stack: DevstackProcess, app_env) -> None:
    from azure.storage.blob import BlobServiceClient

    app_env(stack)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(["CustomerNo", "Name"])
    writer.writerows([f"Z{i:06}", f"Fan-out {i}"] for i in range(ROWS))
    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "erp-import"
    )
    if not container.exists():
        container.create_container()
    container.upload_blob("accounts/fanout.csv", buffer.getvalue().encode(), overwrite=True)

    hosts = [HostProcess(stack, "sync_fanout", ONE_CHUNK_AT_A_TIME) for _ in range(2)]
    try:
        planned = requests.post(
            f"{hosts[0].url}/api/sync/accounts/run", headers={"x-functions-key": hosts[0].key}, timeout=300
        ).json()
        assert (planned["status"], planned["chunks"], planned["rows_read"]) == ("fanned_out", 10, ROWS)
        deadline = time.monotonic() + 600
        report: dict[str, object] = {}
        while time.monotonic() < deadline:
            runs = requests.get(
                f"{hosts[1].url}/api/sync/runs", headers={"x-functions-key": hosts[1].key}, timeout=30
            ).json()
            report = next((r for r in runs if r["run_id"] == planned["run_id"]), {})
            if report.get("status") in ("succeeded", "failed"):  # aggregated by the last chunk
                break
            time.sleep(1)
        assert report.get("status") == "succeeded", report
        assert (report["written"], report["failed"], report["dead_lettered"], report["rows_read"]) == (ROWS, 0, 0, ROWS)
        # The last chunk writes the report before it returns; the host logs "Executed" after that.
        logged_by = time.monotonic() + 30
        while sum(done := [chunks_done(h) for h in hosts]) < 10 and time.monotonic() < logged_by:
            time.sleep(0.2)
        assert sum(done) == 10, done
        assert min(done) >= 1, done  # both hosts took work from the one queue
    finally:
        for host in hosts:
            host.stop()
    api = api_for(stack)
    stats = api.stats()
    assert stats["records_per_table"]["account"] == ROWS
    listed = set()
    link: str | None = f"{api.root}/accounts?$select=accountnumber"
    while link:
        page = api("GET", link).json()
        listed.update(r["accountnumber"] for r in page["value"])
        link = page.get("@odata.nextLink")
    assert listed == {f"Z{i:06}" for i in range(ROWS)}
