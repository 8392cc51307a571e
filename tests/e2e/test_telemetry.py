"""The app's telemetry through the local host into devstack's Application Insights ingestion, sent by the real
Azure Monitor distro with the managed identity's token: after a sync run, the records metric holds exactly the
run report's counts, and the Dataverse requests metric exactly what the emulator answered."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.devstack_process import ARTIFACTS, ROOT, DevstackProcess
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

NEVER = "0 0 0 1 1 *"
EXPORT_WAIT_S = 60
HOST_SETTINGS = {
    "TELEMETRY_ENABLED": "true",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",  # ms: the SDK's default is a minute
    "OTEL_BSP_SCHEDULE_DELAY": "500",
    **{name: NEVER for name in ("EXPIRY_SWEEP_SCHEDULE", "WEBHOOK_RECONCILE_SCHEDULE", "WEBHOOK_WATCH_SCHEDULE",
                                "SYNC_SCHEDULE_ACCOUNTS", "SYNC_SCHEDULE_CONTACTS", "SYNC_SCHEDULE_SHIPMENTS_OUT",
                                "ROTATION_SCHEDULE")},
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    scenario = ROOT / "devstack" / "scenarios" / "default.yaml"
    process = DevstackProcess(scenario, tmp_path_factory.mktemp("telemetry"), "telemetry", "--memory")
    yield process
    process.stop()


def metric_sums(stack: DevstackProcess, name: str) -> Counter[tuple[tuple[str, str], ...]]:
    """The exported deltas of ``name`` added up per attribute set (Application Insights' customDimensions)."""
    sums: Counter[tuple[tuple[str, str], ...]] = Counter()
    for item in stack.telemetry(type="MetricData", name=name):
        data = item["data"]["baseData"]
        dimensions = tuple(sorted((data.get("properties") or {}).items()))
        sums[dimensions] += sum(int(m["value"]) for m in data["metrics"] if m["name"] == name)
    return sums


def traces(stack: DevstackProcess) -> list[tuple[str, str, str, str]]:
    """Every item but metrics as (type, name, id, parent id): what a failed assertion shows."""
    return [
        (
            i["data"]["baseType"],
            i["data"]["baseData"].get("name"),
            i["data"]["baseData"].get("id"),
            i["tags"].get("ai.operation.parentId"),
        )
        for i in stack.telemetry()
        if i["data"]["baseType"] != "MetricData"
    ]


def dataverse_requests(stack: DevstackProcess) -> int:
    routes = stack.stats("dataverse")["requests"]
    return sum(sum(statuses.values()) for route, statuses in routes.items() if "/_devstack/" not in route)


def upload(stack: DevstackProcess, rows: int) -> None:
    from azure.storage.blob import BlobServiceClient

    tag = uuid.uuid4().hex[:5]
    text = "CustomerNo;Name;Category\n" + "".join(f"T{tag}{i};Telemetry {i};Standard\n" for i in range(rows))
    text += ";Telemetry without a key;Standard\n"  # no CustomerNo (required): a dead letter
    service = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"])
    container = service.get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"accounts/{tag}.csv", text.encode(), overwrite=True)


def test_a_sync_run_exports_its_counts_and_every_dataverse_request(stack: DevstackProcess, tmp_path: Path) -> None:
    host = HostProcess(stack, "telemetry", HOST_SETTINGS)
    try:
        before = dataverse_requests(stack)
        upload(stack, rows=12)
        answer = host.post("/api/sync/accounts/run", timeout=120)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["status"] == "succeeded", report
        sent = dataverse_requests(stack) - before
        wanted = {"read": report["rows_read"], "written": report["written"],
                  "dead_lettered": report["dead_lettered"]}  # fmt: skip
        assert (wanted["written"], wanted["dead_lettered"]) == (12, 1), report
        deadline = time.monotonic() + EXPORT_WAIT_S
        while time.monotonic() < deadline:
            records = {dict(k)["outcome"]: v for k, v in metric_sums(stack, "dvbridge.sync.records").items()
                       if dict(k).get("job") == "accounts"}  # fmt: skip
            responses = sum(metric_sums(stack, "dvbridge.dataverse.requests").values())
            if records == wanted and responses >= sent:
                break
            time.sleep(0.5)
        assert records == wanted, "the records metric holds the run report's counts"
        assert responses == sent, "one count per request the emulator answered"
        durations = stack.telemetry(type="MetricData", name="dvbridge.sync.run.duration")
        assert [d["data"]["baseData"]["properties"]["status"] for d in durations] == ["succeeded"]

        def spans(name: str) -> list[dict[str, Any]]:
            return [i for i in stack.telemetry(type="RemoteDependencyData") if i["data"]["baseData"]["name"] == name]

        deadline = time.monotonic() + EXPORT_WAIT_S
        while not spans("sync.run") and time.monotonic() < deadline:
            time.sleep(0.5)
        found = spans("sync.run")
        assert len(found) == 1, traces(stack)
        (run_span,) = found
        trace, run_id = run_span["tags"]["ai.operation.id"], run_span["data"]["baseData"]["id"]
        children = [s for s in spans("dataverse.request") if s["tags"].get("ai.operation.parentId") == run_id]
        assert len(children) == report["requests"], "every request of the run, the write planner's threads too"
        assert {c["tags"]["ai.operation.id"] for c in children} == {trace}
        assert run_span["data"]["baseData"]["properties"]["dvbridge.run.written"] == "12"

        def backlogs() -> dict[str, int]:
            items = stack.telemetry(type="MetricData", name="dvbridge.queue.backlog")
            return {i["data"]["baseData"]["properties"]["queue"]: int(i["data"]["baseData"]["metrics"][0]["value"])
                    for i in items}  # fmt: skip

        deadline = time.monotonic() + EXPORT_WAIT_S
        while len(backlogs()) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert backlogs() == {"sync-chunks": 0, "sync-chunks-poison": 0, "webhook-events": 0,
                              "webhook-events-poison": 0}  # fmt: skip
    finally:
        host.stop()
    every = stack.telemetry()
    assert every, "the host's telemetry reached the ingestion endpoint"
    # Kept where the secret-hygiene scan (tests/integration/test_zz_secret_hygiene.py) reads every log.
    (ARTIFACTS / "telemetry-envelopes.log").write_text("\n".join(json.dumps(item) for item in every))
    text = str(every)
    assert "erp-import" not in text, "no blob name in telemetry"
    assert "Telemetry 0" not in text, "no record value in telemetry"


def test_a_signed_webhook_is_counted_received_and_processed_with_its_lag(stack: DevstackProcess, app_env) -> None:
    import json as _json

    from shared.composition import secret_store
    from tests.e2e.test_webhooks_receivers import signed_headers

    app_env(stack)
    secret = secret_store().get("erp-webhook-secret").value
    host = HostProcess(stack, "telemetry-webhook", HOST_SETTINGS)
    try:
        body = _json.dumps({"customer_no": f"TEL-{uuid.uuid4().hex[:8]}", "name": "Telemetry Webhook Ltd"}).encode()
        answer = requests.post(f"{host.url}/api/webhooks/erp", data=body, timeout=30,
                               headers=signed_headers(secret, body) | {"x-functions-key": host.function_key(
                                   "signed_webhook")})  # fmt: skip
        assert answer.status_code == 202, answer.text
        wanted = {"received": 1, "processed": 1}
        deadline = time.monotonic() + EXPORT_WAIT_S
        while time.monotonic() < deadline:
            events = {dict(k)["outcome"]: v for k, v in metric_sums(stack, "dvbridge.webhook.events").items()
                      if dict(k).get("route") == "erp"}  # fmt: skip
            if events == wanted:
                break
            time.sleep(0.5)
        assert events == wanted
        lags = [m for item in stack.telemetry(type="MetricData", name="dvbridge.webhook.lag")
                for m in item["data"]["baseData"]["metrics"]]  # fmt: skip
        assert sum(int(m.get("count", 1)) for m in lags) == 1, lags
        assert 0 <= float(lags[0]["value"]) < EXPORT_WAIT_S
    finally:
        host.stop()
