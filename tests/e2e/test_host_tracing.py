"""The local host as a peer of the Functions host's OpenTelemetry mode (docs/local-host.md, "Tracing").

Each invocation gets a W3C trace context from the host (an HTTP request's continues a valid incoming
``traceparent``), sent in ``InvocationRequest.trace_context``; with ``PYTHON_ENABLE_OPENTELEMETRY=true`` the
pinned runtime reports ``WorkerOpenTelemetryEnabled`` and attaches that context, so what the function opens is
a child of the host's span; with host.json ``"telemetryMode": "OpenTelemetry"`` the host exports its span to
Application Insights as a request item (here: devstack's ingestion, with the managed identity's token).

The first tests need no devstack; the worker tests start real workers on the pinned runtime; the last ones
run the host against devstack, with a small app written here and with dvbridge itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.datastructures import Headers

from devstack.host import load_app_settings
from devstack.host_telemetry import (
    WORKER_OPEN_TELEMETRY_CAPABILITY,
    HostTracing,
    InvocationSpan,
    RequestExporter,
    parse_traceparent,
    timespan,
)
from devstack.rpc import function_rpc_pb2 as protos
from devstack.worker_channel import WorkerChannel
from tests.devstack_process import ROOT, DevstackProcess
from tests.e2e.test_telemetry import upload
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

NEVER = "0 0 0 1 1 *"
EXPORT_WAIT_S = 60
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"
INCOMING = {"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01", "tracestate": "congo=t61rcWkgMzE"}
OPEN_TELEMETRY = "PYTHON_ENABLE_OPENTELEMETRY"
HOST_SETTINGS = {
    "TELEMETRY_ENABLED": "true",
    OPEN_TELEMETRY: "true",
    "OTEL_BSP_SCHEDULE_DELAY": "500",  # the app's exporter, and the host's as the .NET SDK reads it
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    # The distro's default sampler keeps about 5 spans a second and decides span by span under a remote or
    # unsampled-rate parent, so a burst of Dataverse requests loses some: every span is kept here.
    "OTEL_TRACES_SAMPLER": "microsoft.fixed.percentage",
    "OTEL_TRACES_SAMPLER_ARG": "1.0",
    **{name: NEVER for name in ("EXPIRY_SWEEP_SCHEDULE", "WEBHOOK_RECONCILE_SCHEDULE", "WEBHOOK_WATCH_SCHEDULE",
                                "SYNC_SCHEDULE_ACCOUNTS", "SYNC_SCHEDULE_CONTACTS", "SYNC_SCHEDULE_SHIPMENTS_OUT",
                                "ROTATION_SCHEDULE")},
}  # fmt: skip

# What a function sees of the host's trace context: the runtime's Context (given whatever the worker's
# settings) and OpenTelemetry's current span (attached only in the worker's OpenTelemetry mode).
TRACED_APP = """
import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def seen(context):
    from opentelemetry import trace

    current = trace.get_current_span().get_span_context()
    return json.dumps({
        "trace_parent": context.trace_context.trace_parent,
        "trace_state": context.trace_context.trace_state,
        "attributes": dict(context.trace_context.attributes or {}),
        "trace_id": format(current.trace_id, "032x") if current.is_valid else None,
        "span_id": format(current.span_id, "016x") if current.is_valid else None,
    })


@app.route(route="traced/async", methods=["GET"])
async def traced_async(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(seen(context), mimetype="application/json")


@app.route(route="traced/sync", methods=["GET"])
def traced_sync(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(seen(context), mimetype="application/json")


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def on_startup(timer: func.TimerRequest) -> None:
    pass


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
def fails(timer: func.TimerRequest) -> None:
    raise RuntimeError("a planned failure")
"""
RUNTIME_GAP = (
    "azure-functions-runtime 1.3.0 attaches the trace context on the invocation's asyncio task, and a sync "
    "function runs in the runtime's thread pool (run_in_executor copies no context): its spans are roots. The "
    "host sends the context (the first assertions hold); attaching it in the thread is the runtime's job"
)


def traced_app(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "function_app.py").write_text(TRACED_APP)
    (directory / "host.json").write_text(json.dumps({"version": "2.0", "telemetryMode": "OpenTelemetry"}))
    return directory


# -- the trace context and the request item, without processes ---------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01", (INCOMING_TRACE, INCOMING_SPAN, "01")),
        (f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-00", (INCOMING_TRACE, INCOMING_SPAN, "00")),
        (f"cc-{INCOMING_TRACE}-{INCOMING_SPAN}-01-what-comes-next", (INCOMING_TRACE, INCOMING_SPAN, "01")),
        (f" 00-{INCOMING_TRACE}-{INCOMING_SPAN}-01 ", (INCOMING_TRACE, INCOMING_SPAN, "01")),
        (f"ff-{INCOMING_TRACE}-{INCOMING_SPAN}-01", None),  # version ff is invalid
        (f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01-more", None),  # version 00 has exactly four fields
        (f"00-{'0' * 32}-{INCOMING_SPAN}-01", None),
        (f"00-{INCOMING_TRACE}-{'0' * 16}-01", None),
        (f"00-{INCOMING_TRACE.upper()}-{INCOMING_SPAN}-01", None),
        (f"00-{INCOMING_TRACE[:-1]}-{INCOMING_SPAN}-01", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_traceparent_is_parsed_as_w3c_says(header: str, expected: tuple[str, str, str] | None) -> None:
    parsed = parse_traceparent(header)
    assert (None if parsed is None else (parsed.trace_id, parsed.span_id, parsed.flags)) == expected


def test_a_duration_is_written_as_dotnet_writes_a_timespan() -> None:
    assert timespan(1.5) == "00:00:01.5000000"
    assert timespan(3723.0000001) == "01:02:03.0000001"
    assert timespan(90061.25) == "1.01:01:01.2500000"


def tracing(settings: dict[str, str] | None = None, mode: str = "OpenTelemetry") -> HostTracing:
    return HostTracing({"telemetryMode": mode}, settings or {}, Path("/apps/dvbridge"), lambda _: None)


def test_an_http_request_continues_a_valid_traceparent_with_its_tracestate() -> None:
    span = tracing().http_span("post", "http://127.0.0.1:7071/api/sync/accounts/run?code=k3y", Headers(INCOMING))
    assert span is not None
    assert (span.trace_id, span.parent_id, span.trace_state) == (INCOMING_TRACE, INCOMING_SPAN, "congo=t61rcWkgMzE")
    assert span.span_id not in (INCOMING_SPAN, "0" * 16)
    assert len(span.span_id) == 16
    assert span.traceparent == f"00-{INCOMING_TRACE}-{span.span_id}-01"
    assert span.url == "http://127.0.0.1:7071/api/sync/accounts/run", "no query: ?code= is a key"
    assert span.name == "POST /api/sync/accounts/run"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "00-nothex-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"},
        [("traceparent", INCOMING["traceparent"]), ("traceparent", INCOMING["traceparent"])],  # repeated
    ],
)
def test_without_a_valid_traceparent_a_request_starts_a_new_trace(headers: Any) -> None:
    raw = headers if isinstance(headers, list) else list(headers.items())
    span = tracing().http_span("GET", "http://h/api/x", Headers(raw=[(k.encode(), v.encode()) for k, v in raw]))
    assert span is not None
    assert span.parent_id is None
    assert span.trace_state == ""
    assert span.trace_id != INCOMING_TRACE
    assert len(span.trace_id) == 32
    assert int(span.trace_id, 16)


def test_the_worker_gets_the_spans_context_with_the_hosts_attributes() -> None:
    host = tracing()
    span = host.http_span("POST", "http://h/api/sync/accounts/run", Headers(INCOMING))
    assert span is not None
    host.matched(span, "POST", "api/sync/{job}/run", "sync_run_now")
    context = span.rpc_trace_context()
    assert (context.trace_parent, context.trace_state) == (span.traceparent, "congo=t61rcWkgMzE")
    assert dict(context.attributes) == {
        "ProcessId": str(os.getpid()),
        "LogLevel": "Information",
        "Category": "Function.sync_run_now",
        "HostInstanceId": host.host_instance_id,
    }
    assert span.name == "POST api/sync/{job}/run"
    quiet = tracing({"DEVSTACK_HOST_TRACE_ATTRIBUTES": "none"}).trigger_span("x")
    assert dict(quiet.rpc_trace_context().attributes) == {}


def test_a_timer_or_queue_invocation_is_a_new_root_span_named_after_the_function() -> None:
    first, second = tracing().trigger_span("sync_accounts"), tracing().trigger_span("sync_accounts")
    assert first.name == "Functions.sync_accounts"
    assert first.parent_id is None
    assert first.trace_id != second.trace_id


def test_the_real_hosts_loopback_rule_is_a_setting() -> None:
    headers = Headers({"host": "127.0.0.1:7071"})
    assert tracing().http_span("GET", "http://127.0.0.1:7071/api/x", headers, host_header="127.0.0.1:7071")
    azure = tracing({"DEVSTACK_HOST_TRACE_LOOPBACK": "azure"})
    assert azure.http_span("GET", "http://127.0.0.1:7071/api/x", headers, host_header="127.0.0.1:7071") is None
    assert azure.http_span("GET", "https://app.example/api/x", headers, host_header="app.example") is not None


def test_a_span_becomes_the_request_item_the_exporter_sends() -> None:
    span = InvocationSpan("POST api/sync/{job}/run", INCOMING_TRACE, "b7ad6b7169203331", parent_id=INCOMING_SPAN,
                          url="http://h/api/sync/accounts/run", properties={"faas.trigger": "http"})  # fmt: skip
    span.end(status_code=404)
    item = span.envelope("0d9a3c8e-0000-4000-8000-000000000000", "dvbridge", "machine")
    assert item["name"] == "Request"
    assert item["iKey"] == "0d9a3c8e-0000-4000-8000-000000000000"
    assert item["time"].endswith("Z")
    assert len(item["time"].split(".")[1]) == 8
    assert item["tags"]["ai.operation.id"] == INCOMING_TRACE
    assert item["tags"]["ai.operation.parentId"] == INCOMING_SPAN
    assert item["tags"]["ai.operation.name"] == "POST api/sync/{job}/run"
    base = item["data"]["baseData"]
    assert item["data"]["baseType"] == "RequestData"
    assert (base["id"], base["name"], base["responseCode"], base["success"]) == (
        "b7ad6b7169203331", "POST api/sync/{job}/run", "404", False)  # fmt: skip
    assert base["url"] == "http://h/api/sync/accounts/run"
    assert base["properties"] == {"faas.trigger": "http"}
    root = InvocationSpan("Functions.sync_accounts", INCOMING_TRACE, "b7ad6b7169203331")
    root.end(failed=True)
    item = root.envelope("k", "r", "i")
    assert "ai.operation.parentId" not in item["tags"]
    assert "url" not in item["data"]["baseData"]
    assert (item["data"]["baseData"]["responseCode"], item["data"]["baseData"]["success"]) == ("0", False)


def test_only_opentelemetry_mode_with_a_connection_string_exports() -> None:
    connection = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=k;IngestionEndpoint=https://i.example/"}
    assert tracing(connection, mode="ApplicationInsights").exporter is None
    assert tracing({}).exporter is None
    exporting = tracing(connection, mode="openTelemetry")
    assert exporting.exporter is not None
    assert exporting.exporter.url == "https://i.example/v2.1/track"
    exporting.stop()


class Recorder:
    """An ingestion endpoint stand-in: answers each batch with the next status (then 200)."""

    def __init__(self, statuses: list[tuple[int, dict[str, Any]]] | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.statuses = statuses or []
        self.delay_s = delay_s
        self.release = threading.Event()

    def __call__(self, batch: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        if self.delay_s:
            self.release.wait(self.delay_s)
        self.batches.append(list(batch))
        if self.statuses:
            return self.statuses.pop(0)
        return 200, {}


def exporter(send: Recorder, **settings: str) -> RequestExporter:
    base = {"OTEL_BSP_SCHEDULE_DELAY": "50", **settings}
    return RequestExporter("InstrumentationKey=k;IngestionEndpoint=https://i.example/", base, lambda _: None, send=send)


def test_the_exporter_batches_in_the_background_and_flushes_on_stop() -> None:
    send = Recorder()
    sender = exporter(send, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="3")
    for index in range(7):
        sender.submit({"n": index})
    sender.stop()
    assert max(len(batch) for batch in send.batches) <= 3
    assert [item["n"] for batch in send.batches for item in batch] == list(range(7))
    assert sender.sent == 7


def test_a_full_queue_drops_without_blocking_and_a_broken_endpoint_never_raises() -> None:
    slow = Recorder(delay_s=5)
    sender = exporter(slow, OTEL_BSP_MAX_QUEUE_SIZE="2", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1")
    started = time.perf_counter()
    for index in range(50):
        sender.submit({"n": index})
    assert time.perf_counter() - started < 0.5, "submit never waits for the endpoint"
    assert sender.dropped >= 45
    slow.release.set()
    sender.stop()

    def broken(_: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        raise ConnectionError("refused")

    failing = RequestExporter("InstrumentationKey=k", {"OTEL_BSP_SCHEDULE_DELAY": "10"}, lambda _: None, send=broken)
    failing.submit({"n": 1})
    failing.stop()
    assert failing.failed == 1


def test_a_partial_answer_sends_the_retryable_items_again() -> None:
    send = Recorder([(206, {"errors": [{"index": 1, "statusCode": 500}, {"index": 2, "statusCode": 400}]})])
    sender = exporter(send)
    for index in range(3):
        sender.submit({"n": index})
    deadline = time.monotonic() + 10
    while len(send.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sender.stop()
    assert [item["n"] for item in send.batches[1]] == [1], "the 500 again, not the 400"
    assert (sender.sent, sender.failed) == (2, 1)


# -- the worker's side: real workers on the pinned runtime -------------------------------------------------
def worker_sees(app: Path, open_telemetry: bool, functions: tuple[str, ...]) -> tuple[dict[str, str], list[Any]]:
    """Start a worker on ``app`` with or without the runtime's OpenTelemetry setting, invoke each function once
    with a host span's trace context; return its capabilities and (span, what the function saw) per call."""
    environ = {k: v for k, v in os.environ.items() if k != OPEN_TELEMETRY}
    if open_telemetry:
        environ[OPEN_TELEMETRY] = "true"
    settings, _ = load_app_settings(app, {**environ, "PYTHONPATH": str(ROOT), "TELEMETRY_ENABLED": "false"})

    async def run() -> tuple[dict[str, str], list[Any]]:
        channel = WorkerChannel(app, settings, lambda _: None)
        await channel.start()
        try:
            assert channel.current is not None
            seen = []
            for name in functions:
                host = tracing()
                span = host.http_span("GET", f"http://h/api/{name}", Headers(INCOMING))
                assert span is not None
                host.matched(span, "GET", f"api/{name}", name)
                http = protos.RpcHttp(method="GET", url=f"http://h/api/{name}", body=protos.TypedData(bytes=b""))
                binding = protos.ParameterBinding(name="req", data=protos.TypedData(http=http))
                response = await channel.invoke(name, [binding], {}, invocation_id=str(uuid.uuid4()), timeout_s=60,
                                                trace_context=span.rpc_trace_context())  # fmt: skip
                assert response.result.status == protos.StatusResult.Success, response.result.exception.message
                seen.append((span, json.loads(bytes(response.return_value.http.body.bytes))))
            return dict(channel.current.capabilities), seen
        finally:
            await channel.stop()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return traced_app(tmp_path_factory.mktemp("traced-app"))


def test_without_the_setting_the_worker_reports_no_opentelemetry_and_still_runs(app_dir: Path) -> None:
    capabilities, seen = worker_sees(app_dir, open_telemetry=False, functions=("traced_async", "traced_sync"))
    assert WORKER_OPEN_TELEMETRY_CAPABILITY not in capabilities
    for span, answer in seen:
        assert answer["trace_parent"] == span.traceparent, "the runtime's Context carries it regardless"
        assert answer["attributes"]["HostInstanceId"]
        assert answer["trace_id"] is None, "no OpenTelemetry context is attached"


def test_with_the_setting_an_async_functions_current_span_is_the_hosts(app_dir: Path) -> None:
    capabilities, seen = worker_sees(app_dir, open_telemetry=True, functions=("traced_async",))
    assert capabilities[WORKER_OPEN_TELEMETRY_CAPABILITY] == "true"
    ((span, answer),) = seen
    assert (answer["trace_id"], answer["span_id"]) == (INCOMING_TRACE, span.span_id)
    assert answer["trace_state"] == "congo=t61rcWkgMzE"


@pytest.mark.xfail(strict=True, reason=RUNTIME_GAP)
def test_with_the_setting_a_sync_functions_current_span_is_the_hosts(app_dir: Path) -> None:
    _, seen = worker_sees(app_dir, open_telemetry=True, functions=("traced_sync",))
    ((span, answer),) = seen
    assert answer["trace_parent"] == span.traceparent  # holds: the context reaches the runtime
    assert (answer["trace_id"], answer["span_id"]) == (INCOMING_TRACE, span.span_id)


# -- the host against devstack ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    scenario = ROOT / "devstack" / "scenarios" / "default.yaml"
    process = DevstackProcess(scenario, tmp_path_factory.mktemp("tracing"), "tracing", "--memory")
    yield process
    process.stop()


def wait_for_one(stack: DevstackProcess, what: str, **filters: str) -> dict[str, Any]:
    deadline = time.monotonic() + EXPORT_WAIT_S
    while time.monotonic() < deadline:
        found = stack.telemetry(**filters)
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.25)
    raise AssertionError(f"{what} was not exported: {filters}")


def request_named(stack: DevstackProcess, name: str) -> dict[str, Any]:
    return wait_for_one(stack, f"the request item {name!r}", type="RequestData", name=name)


def test_the_host_exports_each_invocation_and_the_worker_is_its_child(stack: DevstackProcess, app_dir: Path) -> None:
    host = HostProcess(stack, "tracing-app", HOST_SETTINGS, app_dir=app_dir)
    try:
        worker = requests.get(f"{host.url}/_devstack/worker", timeout=10).json()
        assert worker["capabilities"][WORKER_OPEN_TELEMETRY_CAPABILITY] == "true"
        assert worker["telemetry_mode"] == "OpenTelemetry"

        answer = requests.get(f"{host.url}/api/traced/async", headers=INCOMING, timeout=30)
        assert answer.status_code == 200, answer.text
        seen = answer.json()
        assert seen["trace_id"] == INCOMING_TRACE, "the incoming trace is continued into the worker"
        item = wait_for_one(stack, "the HTTP request item", type="RequestData", id=seen["span_id"])
        assert item["name"] == "Request"
        assert item["tags"]["ai.operation.id"] == INCOMING_TRACE
        assert item["tags"]["ai.operation.parentId"] == INCOMING_SPAN
        base = item["data"]["baseData"]
        assert (base["name"], base["responseCode"], base["success"]) == ("GET api/traced/async", "200", True)
        assert base["url"] == f"{host.url}/api/traced/async"
        assert seen["trace_parent"] == f"00-{INCOMING_TRACE}-{base['id']}-01"

        fresh = requests.get(f"{host.url}/api/traced/async", timeout=30).json()
        assert fresh["trace_id"] not in (None, INCOMING_TRACE), "no traceparent: a new trace"
        item = wait_for_one(stack, "the second request item", type="RequestData", id=fresh["span_id"])
        assert item["tags"]["ai.operation.id"] == fresh["trace_id"]
        assert "ai.operation.parentId" not in item["tags"]

        missing = requests.get(f"{host.url}/api/nothing/here", headers=INCOMING, timeout=30)
        assert missing.status_code == 404
        item = request_named(stack, "GET /api/nothing/here")
        assert (item["data"]["baseData"]["responseCode"], item["data"]["baseData"]["success"]) == ("404", False)

        timer = request_named(stack, "Functions.on_startup")  # run on startup: a root span of its own
        assert "ai.operation.parentId" not in timer["tags"]
        assert (timer["data"]["baseData"]["responseCode"], timer["data"]["baseData"]["success"]) == ("0", True)
        ran = host.post("/admin/functions/fails", key=host.master_key(), json={}, timeout=30)
        assert ran.status_code == 202
        failed = request_named(stack, "Functions.fails")
        assert failed["data"]["baseData"]["success"] is False
        assert failed["tags"]["ai.operation.id"] != timer["tags"]["ai.operation.id"]
    finally:
        host.stop()


@pytest.fixture(scope="module")
def sync_run(stack: DevstackProcess) -> dict[str, Any]:
    """One sync run of dvbridge through the host, called with a traceparent: its request item and the
    app's spans."""
    host = HostProcess(stack, "tracing", HOST_SETTINGS)
    try:
        upload(stack, rows=3)
        answer = requests.post(f"{host.url}/api/sync/accounts/run", headers={"x-functions-key": host.key, **INCOMING},
                               timeout=120)  # fmt: skip
        assert answer.status_code == 200, answer.text
        report = answer.json()
        request = wait_for_one(stack, "the sync run's request item", type="RequestData", operation_id=INCOMING_TRACE,
                               name="POST api/sync/{job}/run")  # fmt: skip

        def spans() -> list[dict[str, Any]]:
            return [s for s in stack.telemetry(type="RemoteDependencyData")
                    if s["data"]["baseData"]["name"] in ("sync.run", "dataverse.request")]  # fmt: skip

        deadline = time.monotonic() + EXPORT_WAIT_S
        while not any(s["data"]["baseData"]["name"] == "sync.run" for s in spans()) and time.monotonic() < deadline:
            time.sleep(0.25)
        return {"report": report, "request": request, "spans": spans()}
    finally:
        host.stop()


def test_the_sync_runs_request_item_continues_the_callers_trace(sync_run: dict[str, Any]) -> None:
    request = sync_run["request"]
    assert request["tags"]["ai.operation.parentId"] == INCOMING_SPAN
    base = request["data"]["baseData"]
    assert (base["responseCode"], base["success"]) == ("200", True)
    assert base["url"].endswith("/api/sync/accounts/run")
    assert request["tags"]["ai.operation.name"] == "POST api/sync/{job}/run"
    assert sync_run["report"]["status"] == "succeeded"
    names = {s["data"]["baseData"]["name"] for s in sync_run["spans"]}
    assert {"sync.run", "dataverse.request"} <= names, "the app exports its spans"


def test_the_apps_spans_are_children_of_the_hosts_request(sync_run: dict[str, Any]) -> None:
    """The runtime gap above, closed by the app: shared.telemetry.traced attaches the invocation's context."""
    request_id = sync_run["request"]["data"]["baseData"]["id"]
    by_id = {s["data"]["baseData"]["id"]: s for s in sync_run["spans"]}
    (run,) = [s for s in sync_run["spans"] if s["data"]["baseData"]["name"] == "sync.run"]
    assert run["tags"]["ai.operation.id"] == INCOMING_TRACE
    for span in sync_run["spans"]:
        assert span["tags"]["ai.operation.id"] == INCOMING_TRACE
        parent = span["tags"].get("ai.operation.parentId")
        while parent in by_id:
            parent = by_id[parent]["tags"].get("ai.operation.parentId")
        assert parent == request_id, "each chain of parents ends at the host's request"
