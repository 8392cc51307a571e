"""The sync blueprint through the local host (real function_app.py), and start-up with a broken jobs file."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess, subprocess_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("syncfn"), "syncfn",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    yield process
    process.stop()


def test_run_now_and_recent_reports(stack: DevstackProcess, app_env) -> None:
    from azure.storage.blob import BlobServiceClient

    app_env(stack)
    tag = uuid.uuid4().hex[:5]
    csv_text = (
        "CustomerNo;Name;Category\n"
        + "".join(f"F{tag}{i};Fn {i};Standard\n" for i in range(50))
        + f"F{tag}x;Bad;Gold\n"
    )
    service = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"])
    container = service.get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"accounts/{tag}.csv", csv_text.encode(), overwrite=True)

    base, key = stack.env["FUNCTIONS_BASE_URL"], stack.env["FUNCTIONS_HOST_KEY"]
    assert requests.post(f"{base}/api/sync/accounts/run", timeout=60).status_code == 401
    report = requests.post(f"{base}/api/sync/accounts/run", headers={"x-functions-key": key}, timeout=120)
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["status"], body["written"], body["dead_lettered"]) == ("succeeded", 50, 1)
    runs = requests.get(f"{base}/api/sync/runs", headers={"x-functions-key": key}, timeout=30).json()
    assert runs[0]["run_id"] == body["run_id"]
    unknown = requests.post(f"{base}/api/sync/nope/run", headers={"x-functions-key": key}, timeout=30)
    assert unknown.status_code == 404
    assert "accounts" in unknown.json()["jobs"]
    api = api_for(stack)
    names = api("GET", "accounts", params={"$select": "name", "$filter": f"startswith(accountnumber,'F{tag}')"}).json()[
        "value"
    ]
    assert len(names) == 50


def test_a_broken_jobs_file_stops_start_up(tmp_path: Path) -> None:
    broken = tmp_path / "sync_jobs.yaml"
    broken.write_text(
        (ROOT / "sync_jobs.yaml").read_text().replace("table: contact", "table: contact\n    strategy: fastest", 1)
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            "run",
            "--once",
            "--dir",
            str(tmp_path / "state"),
            "--host-port",
            "0",
            "--no-azurite",
        ],
        cwd=ROOT,
        env=subprocess_env({"SYNC_JOBS_FILE": str(broken)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode != 0
    assert f"{broken}: job 'contacts' field 'strategy'" in completed.stderr, completed.stderr
