"""Outbound sync: changes made in the emulator, deletions included, reach the sink exactly once across runs."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.storage import Storage
from shared.sync.engine import SyncContext
from shared.sync.jobs import OutboundJob, load_jobs
from shared.sync.outbound import run_outbound
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("out"),
        "out",
        "--memory",
        "--time-scale",
        "0.01",
    )
    yield process
    process.stop()


def sink_lines(storage: Storage, job: str) -> list[dict[str, object]]:
    container = storage.blob_service().get_container_client("erp-export")
    lines = []
    for blob in container.list_blobs(name_starts_with=f"{job}/"):
        lines += [json.loads(t) for t in container.download_blob(blob.name).readall().decode().splitlines() if t]
    return lines


def test_changes_reach_the_sink_exactly_once(stack, app_env) -> None:
    app_env(stack)
    client = DataverseClient(
        stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
    )
    ctx = SyncContext(Storage(stack.env["AzureWebJobsStorage"]), client)
    job = load_jobs(ROOT / "sync_jobs.yaml")["shipments-out"]
    assert isinstance(job, OutboundJob)
    name = f"shipments-{uuid.uuid4().hex[:5]}"
    ids = [
        client.create("dvb_shipments", {"dvb_name": f"s{i}", "dvb_carrier": "UPS", "dvb_trackingnumber": f"{name}{i}"})
        for i in range(3)
    ]

    first = run_outbound(name, job, ctx)
    assert first.status == "succeeded"
    assert first.written == 3
    client.update("dvb_shipments", ids[0], {"dvb_name": "s0 changed"})
    client.delete("dvb_shipments", ids[1])
    new_id = client.create("dvb_shipments", {"dvb_name": "s3", "dvb_carrier": "UPS", "dvb_trackingnumber": f"{name}3"})
    second = run_outbound(name, job, ctx)
    assert second.written == 3
    assert run_outbound(name, job, ctx).written == 0  # nothing new: nothing sent

    lines = sink_lines(ctx.storage, name)
    events = Counter(
        (line["op"], line.get("id") or line["record"]["dvb_shipmentid"], line.get("record", {}).get("dvb_name"))
        for line in lines
    )  # type: ignore[union-attr,index,attr-defined]
    assert events == Counter(
        {
            ("upsert", ids[0], "s0"): 1,
            ("upsert", ids[1], "s1"): 1,
            ("upsert", ids[2], "s2"): 1,
            ("upsert", ids[0], "s0 changed"): 1,
            ("upsert", new_id, "s3"): 1,
            ("delete", ids[1], None): 1,
        }
    )


def test_a_crash_before_the_delta_link_is_saved_does_not_duplicate(stack, app_env, monkeypatch) -> None:
    app_env(stack)
    client = DataverseClient(
        stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
    )
    storage = Storage(stack.env["AzureWebJobsStorage"])
    ctx = SyncContext(storage, client)
    job = load_jobs(ROOT / "sync_jobs.yaml")["shipments-out"]
    assert isinstance(job, OutboundJob)
    name = f"crash-{uuid.uuid4().hex[:5]}"
    run_outbound(name, job, ctx)  # baseline: everything so far
    before = len(sink_lines(storage, name))
    created = client.create(
        "dvb_shipments", {"dvb_name": "late", "dvb_carrier": "DHL", "dvb_trackingnumber": f"{name}"}
    )

    real_set_state = storage.set_state

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("worker killed after the sink write, before the delta link was saved")

    monkeypatch.setattr(storage, "set_state", crash)
    with pytest.raises(RuntimeError):
        run_outbound(name, job, ctx)
    monkeypatch.setattr(storage, "set_state", real_set_state)
    assert run_outbound(name, job, ctx).written == 1  # the same delta again...
    late = [line for line in sink_lines(storage, name) if line.get("record", {}).get("dvb_shipmentid") == created]  # type: ignore[union-attr]
    assert len(late) == 1  # ...overwrote the same file: the change reached the sink once
    assert len(sink_lines(storage, name)) == before + 1


def test_http_sink_is_retried_and_the_delta_link_waits_for_it(stack, app_env) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, object]] = []
    statuses = [503, 200, 200, 200]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = statuses.pop(0) if statuses else 200
            if status == 200:
                received.extend(body["changes"])
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app_env(stack)
        client = DataverseClient(
            stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
        )
        ctx = SyncContext(Storage(stack.env["AzureWebJobsStorage"]), client)
        job = OutboundJob.model_validate(
            {"direction": "outbound", "table": "dvb_shipment", "entity_set": "dvb_shipments", "select": ["dvb_name"],
             "sink": {"kind": "http_post", "url": f"http://127.0.0.1:{server.server_address[1]}/hook", "batch_size": 2}}
        )  # fmt: skip
        name = f"http-{uuid.uuid4().hex[:5]}"
        existing = run_outbound(name, job, ctx).written
        for i in range(3):
            client.create(
                "dvb_shipments", {"dvb_name": f"{name}-{i}", "dvb_carrier": "GLS", "dvb_trackingnumber": f"{name}{i}"}
            )
        report = run_outbound(name, job, ctx)
        assert report.written == 3
        names = sorted(str(c["record"]["dvb_name"]) for c in received if c["op"] == "upsert")  # type: ignore[index]
        # The 503 was retried and nothing was delivered twice: each new shipment reached the sink once.
        assert [n for n in names if n.startswith(f"{name}-")] == [f"{name}-{i}" for i in range(3)]
        assert existing == len(names) - 3
    finally:
        server.shutdown()


def test_the_cli_runs_a_job(stack, app_env) -> None:
    import subprocess
    import sys

    from tests.devstack_process import subprocess_env

    settings = app_env(stack)
    listed = subprocess.run(
        [sys.executable, "-m", "shared.sync", "jobs"],
        cwd=ROOT,
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "accounts: inbound account" in listed.stdout
    assert "shipments-out: outbound dvb_shipment" in listed.stdout
    ran = subprocess.run(
        [sys.executable, "-m", "shared.sync", "run", "shipments-out"],
        cwd=ROOT,
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["status"] == "succeeded"
    missing = subprocess.run(
        [sys.executable, "-m", "shared.sync", "run", "nope"],
        cwd=ROOT,
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "jobs: accounts" in missing.stderr
