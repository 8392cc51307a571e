"""devstack's Application Insights ingestion (issue 22) driven by the real azure-monitor-opentelemetry-exporter
and opentelemetry-sdk over real sockets: metrics, a span tree and a log record arrive with their names, values
and parent/child ids, authenticated with a managed-identity token for Azure Monitor; requests without a token,
with another audience or from a non-publisher are refused and store nothing; a wrong iKey is a per-item error
(206/400); an outage and injected 429/206 answers are retried by the exporter (azure-core in the request, its
offline storage after it) and the data arrives afterwards. A dedicated devstack, so no other test sees it."""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

MONITOR_SCOPE = "https://monitor.azure.com//.default"  # what the exporter asks for (its _DEFAULT_AAD_SCOPE)
VAULT_SCOPE = "https://vault.azure.net/.default"
ROTATION_ADMIN = "6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31"  # default.yaml's user-assigned identity
SERVICE_NAME = "dvbridge-appinsights-test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("appinsights"),
        "appinsights",
        "--no-azurite",
        "--memory",
    )
    yield process
    process.stop()


@dataclass
class Ingestion:
    """The ingestion endpoint as a test sees it: raw track calls, the store, the controls."""

    stack: DevstackProcess

    @property
    def url(self) -> str:
        return self.stack.url("appinsights")

    @property
    def ikey(self) -> str:
        connection = dict(p.split("=", 1) for p in self.stack.env["APPLICATIONINSIGHTS_CONNECTION_STRING"].split(";"))
        return connection["InstrumentationKey"]

    def track(
        self, body: Any, token: str | None = None, path: str = "/v2.1/track", **headers: str
    ) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return requests.post(self.url + path, data=data, headers=sent, timeout=10)

    def telemetry(self, **filters: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/_devstack/telemetry", params=filters, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def items(self, **filters: str) -> list[dict[str, Any]]:
        return list(self.telemetry(**filters)["items"])

    def control(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.url}/_devstack/control", json=payload, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def outage(self, seconds: float) -> None:
        requests.post(f"{self.url}/_devstack/outage", json={"seconds": seconds}, timeout=10).raise_for_status()

    def track_statuses(self) -> dict[str, int]:
        return dict(self.stack.stats("appinsights")["requests"].get("POST /v2.1/track", {}))

    def envelope(self, message: str = "hello", **overrides: Any) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": "Microsoft.ApplicationInsights.Message",
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "iKey": self.ikey,
            "tags": {"ai.operation.id": uuid.uuid4().hex},
            "data": {"baseType": "MessageData", "baseData": {"ver": 2, "message": message}},
        }
        item.update(overrides)
        return {k: v for k, v in item.items() if v is not None}


def token(scope: str = MONITOR_SCOPE, client_id: str | None = None) -> str:
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    return credential.get_token(scope).token


@pytest.fixture
def ingest(stack: DevstackProcess, app_env: Any) -> Iterator[Ingestion]:
    # The app's settings from .devstack/env (connection string, CA bundle, managed identity, statsbeat and the
    # control plane off); customer SDK stats would add their own metrics to the store every 15 minutes.
    app_env(stack, APPLICATIONINSIGHTS_SDKSTATS_DISABLED="true")
    ingestion = Ingestion(stack)
    ingestion.outage(0)
    ingestion.control(
        {
            "fail": {"count": 0},
            "partial": {"count": 0},
            "local_auth_disabled": True,
            "publishers": None,
            "max_items": 100_000,
        }
    )
    requests.delete(f"{ingestion.url}/_devstack/telemetry", timeout=10).raise_for_status()
    stack._call("appinsights", "/_devstack/stats/reset", {})
    yield ingestion
    ingestion.outage(0)


class Pipeline:
    """The OpenTelemetry SDK wired to the three Azure Monitor exporters, as an app would configure it:
    metrics exported on force_flush, each span and log record exported as it ends."""

    def __init__(self, **exporter_options: Any) -> None:
        from azure.identity import ManagedIdentityCredential
        from azure.monitor.opentelemetry.exporter import (
            AzureMonitorLogExporter,
            AzureMonitorMetricExporter,
            AzureMonitorTraceExporter,
        )
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        options: dict[str, Any] = {"disable_offline_storage": True, **exporter_options}
        if "credential" not in options:
            options["credential"] = ManagedIdentityCredential()
        elif options["credential"] is None:
            del options["credential"]  # as an app without APPLICATIONINSIGHTS_AUTHENTICATION_STRING
        resource = Resource.create({"service.name": SERVICE_NAME})
        self.reader = PeriodicExportingMetricReader(
            AzureMonitorMetricExporter(**options), export_interval_millis=math.inf
        )
        self.meters = MeterProvider(metric_readers=[self.reader], resource=resource)
        self.tracers = TracerProvider(resource=resource)
        self.tracers.add_span_processor(
            SimpleSpanProcessor(AzureMonitorTraceExporter(tracer_provider=self.tracers, **options))
        )
        self.loggers = LoggerProvider(resource=resource)
        self.loggers.add_log_record_processor(SimpleLogRecordProcessor(AzureMonitorLogExporter(**options)))
        self.logger = logging.getLogger(f"tests.appinsights.{uuid.uuid4().hex[:8]}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        with warnings.catch_warnings():  # 1.45 points at opentelemetry-instrumentation-logging's handler instead
            warnings.simplefilter("ignore", DeprecationWarning)
            self.logger.addHandler(LoggingHandler(logger_provider=self.loggers))
        self.tracer = self.tracers.get_tracer("dvbridge.tests")
        self.meter = self.meters.get_meter("dvbridge.tests")

    def span(self, name: str) -> str:
        """End one internal span; return its span id as the exporter writes it."""
        with self.tracer.start_as_current_span(name) as span:
            return f"{span.get_span_context().span_id:016x}"

    def shutdown(self) -> None:
        self.logger.handlers.clear()
        self.meters.shutdown()
        self.tracers.shutdown()
        self.loggers.shutdown()


@pytest.fixture
def pipelines() -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(**options: Any) -> Pipeline:
        made.append(Pipeline(**options))
        return made[-1]

    yield make
    for pipeline in made:
        pipeline.shutdown()


def wait_for(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_env_points_the_exporter_at_devstack(stack: DevstackProcess) -> None:
    url = stack.env["DEVSTACK_APPINSIGHTS_URL"]
    assert url.startswith("https://127.0.0.1:")
    connection = dict(p.split("=", 1) for p in stack.env["APPLICATIONINSIGHTS_CONNECTION_STRING"].split(";"))
    assert connection["IngestionEndpoint"] == connection["LiveEndpoint"] == url + "/"
    assert uuid.UUID(connection["InstrumentationKey"])
    assert stack.env["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"
    assert stack.env["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] == "true"
    assert stack.env["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] == "true"


def test_metrics_spans_and_logs_arrive_as_the_exporter_sent_them(
    ingest: Ingestion, pipelines: Callable[..., Pipeline], stack: DevstackProcess
) -> None:
    from opentelemetry.trace import SpanKind

    pipeline = pipelines()
    written = pipeline.meter.create_counter("dvbridge.records.written", unit="{record}")
    duration = pipeline.meter.create_histogram("dvbridge.run.duration", unit="s")
    written.add(3, {"job": "accounts"})
    written.add(4, {"job": "accounts"})
    duration.record(1.5, {"job": "accounts"})
    duration.record(2.5, {"job": "accounts"})
    assert pipeline.meters.force_flush()

    with (
        pipeline.tracer.start_as_current_span("sync accounts", kind=SpanKind.SERVER) as root,
        pipeline.tracer.start_as_current_span("dataverse UpsertMultiple", kind=SpanKind.CLIENT) as child,
    ):
        pipeline.logger.warning("dead-lettered %d rows", 3)
    trace_id = f"{root.get_span_context().trace_id:032x}"
    root_id, child_id = f"{root.get_span_context().span_id:016x}", f"{child.get_span_context().span_id:016x}"

    [counter] = ingest.items(type="MetricData", name="dvbridge.records.written")
    [point] = counter["data"]["baseData"]["metrics"]
    assert (point["value"], point["count"]) == (7, 1)  # delta temporality: one point per flush
    assert counter["data"]["baseData"]["properties"] == {"job": "accounts"}
    assert counter["iKey"] == ingest.ikey
    assert counter["tags"]["ai.cloud.role"] == SERVICE_NAME
    [histogram] = ingest.items(type="MetricData", name="dvbridge.run.duration")
    [point] = histogram["data"]["baseData"]["metrics"]
    assert (point["value"], point["count"], point["min"], point["max"]) == (4.0, 2, 1.5, 2.5)
    # Application Insights' DataPoint has no unit: the exporter drops the instruments' units on the wire.
    assert "unit" not in json.dumps([counter, histogram])

    [request] = ingest.items(type="RequestData", operation_id=trace_id)
    [dependency] = ingest.items(type="RemoteDependencyData", operation_id=trace_id)
    assert request["data"]["baseData"]["name"] == "sync accounts"
    assert request["data"]["baseData"]["id"] == root_id
    assert "ai.operation.parentId" not in request["tags"]
    assert dependency["data"]["baseData"]["name"] == "dataverse UpsertMultiple"
    assert dependency["data"]["baseData"]["id"] == child_id
    assert dependency["tags"]["ai.operation.parentId"] == root_id
    assert ingest.items(parent_id=root_id, type="RemoteDependencyData") == [dependency]

    [log] = ingest.items(type="MessageData", operation_id=trace_id)
    assert log["data"]["baseData"]["message"] == "dead-lettered 3 rows"
    assert log["data"]["baseData"]["severityLevel"] == 2  # Warning: a number on the wire, not the spec's string
    assert log["tags"]["ai.operation.parentId"] == child_id

    # Every track call carried a managed-identity token for Azure Monitor and was accepted.
    issued = stack.stats("mi")["tokens_issued"]
    assert any("https://monitor.azure.com" in resources for resources in issued.values())
    statuses = ingest.track_statuses()
    assert set(statuses) == {"200"}
    assert statuses["200"] >= 3
    view = ingest.telemetry()
    assert view["count"] == view["stored"] == view["accepted"] >= 6
    assert view["dropped"] == 0


def test_without_a_token_nothing_is_stored(
    ingest: Ingestion, pipelines: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    response = ingest.track([ingest.envelope(), ingest.envelope()])
    assert response.status_code == 401
    body = response.json()
    assert (body["itemsReceived"], body["itemsAccepted"]) == (2, 0)
    assert [(e["index"], e["statusCode"]) for e in body["errors"]] == [(0, 401), (1, 401)]

    # An app that was not given APPLICATIONINSIGHTS_AUTHENTICATION_STRING (nor a credential) sends no token:
    # 401, which the exporter counts as retryable; with offline storage off the span is lost.
    monkeypatch.delenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    pipeline = pipelines(credential=None)
    pipeline.span("unauthenticated")
    assert ingest.track_statuses() == {"401": 2}
    assert ingest.telemetry()["stored"] == 0

    # With local authentication enabled the same request is taken.
    ingest.control({"local_auth_disabled": False})
    assert ingest.track([ingest.envelope("local auth")]).status_code == 200
    assert [i["data"]["baseData"]["message"] for i in ingest.items()] == ["local auth"]


def test_another_audience_or_a_non_publisher_is_refused(ingest: Ingestion) -> None:
    response = ingest.track([ingest.envelope()], token=token(VAULT_SCOPE))
    assert response.status_code == 403
    assert response.json()["errors"][0]["statusCode"] == 403

    ingest.control({"publishers": ["function-app"]})
    assert ingest.track([ingest.envelope()], token=token(client_id=ROTATION_ADMIN)).status_code == 403
    assert ingest.track([ingest.envelope()], token="not-a-jwt").status_code == 401
    assert ingest.telemetry()["stored"] == 0
    assert ingest.track([ingest.envelope("publisher")], token=token()).status_code == 200
    assert ingest.telemetry()["stored"] == 1


def test_each_envelope_is_validated(ingest: Ingestion, pipelines: Callable[..., Pipeline]) -> None:
    bearer = token()
    good, wrong_key, no_time = ingest.envelope("good"), ingest.envelope(iKey=str(uuid.uuid4())), ingest.envelope()
    del no_time["time"]
    response = ingest.track([good, wrong_key, no_time], token=bearer)
    assert response.status_code == 206
    assert response.json() == {
        "itemsReceived": 3,
        "itemsAccepted": 1,
        "errors": [
            {"index": 1, "statusCode": 400, "message": "Invalid instrumentation key"},
            {
                "index": 2,
                "statusCode": 400,
                "message": "109: Field 'time' on type 'Envelope' is required but missing or empty."
                " Expected: string, Actual: undefined",
            },
        ],
    }
    assert [i["data"]["baseData"]["message"] for i in ingest.items()] == ["good"]

    no_message = ingest.envelope()
    del no_message["data"]["baseData"]["message"]
    response = ingest.track([wrong_key, no_message], token=bearer)  # nothing accepted, every error a 400
    assert response.status_code == 400
    assert response.json()["errors"][1]["message"].startswith("109: Field 'message' on type 'MessageData'")
    assert ingest.track(b"{not json", token=bearer).status_code == 400

    # gzip, the older /v2/track route and the doubled slash of "IngestionEndpoint=https://host/" + "/v2.1/track".
    zipped = gzip.compress(json.dumps([ingest.envelope("zipped")]).encode())
    assert ingest.track(zipped, token=bearer, **{"Content-Encoding": "gzip"}).status_code == 200
    assert ingest.track([ingest.envelope("v2")], token=bearer, path="/v2/track").status_code == 200
    assert ingest.track([ingest.envelope("slashes")], token=bearer, path="//v2.1/track").status_code == 200
    assert ingest.telemetry(type="MessageData")["count"] == 4

    # The exporter with another resource's key: 400 for the whole batch, which it drops (not retryable).
    pipeline = pipelines(connection_string=f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint={ingest.url}/")
    pipeline.span("someone else's")
    assert ingest.track_statuses()["400"] == 3
    assert ingest.telemetry()["stored"] == 4


def test_the_store_is_bounded(ingest: Ingestion) -> None:
    ingest.control({"max_items": 2})
    ingest.control({"local_auth_disabled": False})
    assert ingest.track([ingest.envelope(str(n)) for n in range(3)]).status_code == 200
    view = ingest.telemetry()
    assert [i["data"]["baseData"]["message"] for i in view["items"]] == ["1", "2"]
    assert (view["stored"], view["accepted"], view["dropped"]) == (2, 3, 1)
    assert ingest.stack.stats("appinsights")["counters"]["telemetry items accepted"] == 3


def test_an_outage_is_retried_within_the_request(ingest: Ingestion, pipelines: Callable[..., Pipeline]) -> None:
    """azure-core retries a POST answered 503 at once and again 1.6 s later: a short outage loses nothing."""
    pipeline = pipelines()
    ingest.outage(1.0)
    span_id = pipeline.span("during a short outage")
    assert wait_for(lambda: ingest.items(id=span_id))
    statuses = ingest.track_statuses()
    assert statuses["503"] >= 1
    assert statuses["200"] == 1


def test_a_long_outage_goes_to_offline_storage_and_arrives_after(
    ingest: Ingestion, pipelines: Callable[..., Pipeline], tmp_path: Path
) -> None:
    storage = tmp_path / "exporter-storage"
    pipeline = pipelines(
        disable_offline_storage=False, storage_directory=str(storage), storage_min_retry_interval=1, retry_total=0
    )
    ingest.outage(30)
    lost_id = pipeline.span("during the outage")
    assert ingest.track_statuses() == {"503": 1}
    assert list(storage.rglob("*.blob*")), "the exporter kept the failed batch on disk"
    assert ingest.telemetry()["stored"] == 0
    ingest.outage(0)
    time.sleep(1.2)  # the stored batch's lease (storage_min_retry_interval)
    after_id = pipeline.span("after the outage")  # a successful export drains the offline storage
    assert wait_for(lambda: ingest.items(id=lost_id))
    assert ingest.items(id=after_id)
    assert not list(storage.rglob("*.blob*"))


def test_throttling_and_partial_success_are_retried(
    ingest: Ingestion, pipelines: Callable[..., Pipeline], tmp_path: Path
) -> None:
    pipeline = pipelines(disable_offline_storage=False, storage_directory=str(tmp_path), storage_min_retry_interval=1)
    # 429 with Retry-After: azure-core waits and sends the same request again.
    ingest.control({"fail": {"count": 1, "status": 429, "retry_after_s": 1}})
    started = time.monotonic()
    throttled_id = pipeline.span("throttled")
    assert time.monotonic() - started >= 0.9
    assert ingest.items(id=throttled_id)
    assert ingest.track_statuses() == {"429": 1, "200": 1}

    # 206 refusing the span (the last item; the first is the exporter's _OTELRESOURCE_ metric) with a 500: the
    # exporter keeps that item and sends it after its next successful export.
    ingest.control({"partial": {"count": 1, "status": 500, "indices": [-1]}})
    refused_id = pipeline.span("refused once")
    assert not ingest.items(id=refused_id)
    assert ingest.track_statuses()["206"] == 1
    time.sleep(1.2)
    next_id = pipeline.span("next")
    assert wait_for(lambda: ingest.items(id=refused_id))
    assert ingest.items(id=next_id)
