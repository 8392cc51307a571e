"""The app's metrics and spans, read back through the OpenTelemetry SDK's in-memory reader and exporter: what
a sync run, a Dataverse response and a token record, with which attributes, and that nothing of a record's
key, value or URL becomes an attribute; configure() stays off without a connection string or when turned
off, and its failure never escapes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from shared.sync.run import RunReport
from tests.unit.test_outgoing_http import Clock, CountingGovernor, Tokens

pytestmark = pytest.mark.unit

THROTTLED = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000 over "
                       "time window of 300 seconds."}}  # fmt: skip


class Recorded:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracers = TracerProvider()
        tracers.add_span_processor(SimpleSpanProcessor(self.spans))
        telemetry.use_providers_for_tests(MeterProvider(metric_readers=[self.reader]), tracers)

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def sums(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        return {tuple(sorted(attributes.items())): point.value for attributes, point in self.points(name)}


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    yield Recorded()
    telemetry.use_providers_for_tests(None, None)


def test_a_finished_run_records_each_outcome_and_its_duration(recorded: Recorded) -> None:
    report = RunReport("accounts", "r1", "2026-12-04T00:00:00Z", status="succeeded", rows_read=10, written=7,
                       unchanged=2, dead_lettered=1, duration_s=2.5)  # fmt: skip
    telemetry.record_run(report)
    telemetry.record_run(RunReport("accounts", "r2", "2026-12-04T00:01:00Z", status="failed", rows_read=3,
                                   failed=3, duration_s=0.5))  # fmt: skip
    job = (("job", "accounts"), ("kind", "inbound"))
    assert recorded.sums(telemetry.SYNC_RECORDS) == {
        (*job, ("outcome", "dead_lettered")): 1,
        (*job, ("outcome", "failed")): 3,
        (*job, ("outcome", "read")): 13,
        (*job, ("outcome", "unchanged")): 2,
        (*job, ("outcome", "written")): 7,
    }
    durations = {a["status"]: (p.count, p.sum) for a, p in recorded.points(telemetry.SYNC_RUN_DURATION)}
    assert durations == {"succeeded": (1, 2.5), "failed": (1, 0.5)}


def test_a_skipped_run_records_nothing(recorded: Recorded) -> None:
    telemetry.record_run(RunReport("accounts", "r1", "2026-12-04T00:00:00Z", status="skipped"))
    assert recorded.points(telemetry.SYNC_RUN_DURATION) == []
    assert recorded.points(telemetry.SYNC_RECORDS) == []


class ScriptedSession:
    """Answers 429 with Dataverse's throttle body and Retry-After, then 200; a connection error when told."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        status = self.statuses.pop(0)
        if isinstance(status, Exception):
            raise status
        answer = requests.Response()
        answer.status_code = status
        answer.headers["Retry-After"] = "1"
        answer._content = json.dumps(THROTTLED if status == 429 else {"UserId": "u"}).encode()
        return answer


def client_for(session: ScriptedSession) -> Any:
    from shared.dataverse.client import ClientOptions, DataverseClient

    clock = Clock()
    return DataverseClient("https://org.example", Tokens(), session=session,  # type: ignore[arg-type]
                           options=ClientOptions(), governor=CountingGovernor(clock), sleep=clock.sleep)  # fmt: skip


def test_every_dataverse_response_is_counted_by_status_class_and_a_429_by_its_limit(recorded: Recorded) -> None:
    client = client_for(ScriptedSession(429, 200, 404))
    client.whoami()
    assert (
        client.request("GET", "accounts(00000000-0000-0000-0000-000000000001)", raise_for_status=False).status_code
        == 404
    )
    assert recorded.sums(telemetry.DATAVERSE_REQUESTS) == {
        (("status_class", "2xx"), ("throttle_code", "none")): 1,
        (("status_class", "4xx"), ("throttle_code", "0x80072322")): 1,
        (("status_class", "4xx"), ("throttle_code", "none")): 1,
    }


def test_a_request_that_got_no_answer_is_counted_as_none(recorded: Recorded) -> None:
    from shared.errors import DataverseError

    client = client_for(ScriptedSession(*[requests.ConnectionError("reset")] * 10))
    with pytest.raises(DataverseError):
        client.whoami()
    sums = recorded.sums(telemetry.DATAVERSE_REQUESTS)
    assert set(sums) == {(("status_class", "none"), ("throttle_code", "none"))}


def test_no_attribute_carries_a_key_a_value_or_a_url(recorded: Recorded) -> None:
    client = client_for(ScriptedSession(200))
    client.request("GET", "accounts(accountnumber='C000%3269')", raise_for_status=False)
    telemetry.record_run(RunReport("accounts", "run-secret-id", "t", status="succeeded", written=1))
    with telemetry.span("sync.run", job="accounts"):
        pass
    values = [str(v) for name in (telemetry.SYNC_RECORDS, telemetry.DATAVERSE_REQUESTS, telemetry.SYNC_RUN_DURATION)
              for attributes, _ in recorded.points(name) for v in attributes.values()]  # fmt: skip
    assert values, "something was recorded"
    assert not [v for v in values if "C000" in v or "org.example" in v or "run-secret-id" in v or "/" in v]


def test_spans_nest_under_the_current_one(recorded: Recorded) -> None:
    with telemetry.span("invocation"), telemetry.span("sync.run", job="accounts"):
        pass
    finished = {s.name: s for s in recorded.spans.get_finished_spans()}
    assert finished["sync.run"].parent is not None
    assert finished["sync.run"].parent.span_id == finished["invocation"].context.span_id
    assert finished["sync.run"].attributes == {"job": "accounts"}


def test_tokens_are_counted_by_source(recorded: Recorded) -> None:
    telemetry.record_token("entra")
    telemetry.record_token("cache")
    telemetry.record_token("cache")
    assert recorded.sums(telemetry.TOKEN_ACQUISITIONS) == {(("source", "cache"),): 2, (("source", "entra"),): 1}


def test_configure_stays_off_without_a_connection_string_or_when_turned_off(
    monkeypatch: pytest.MonkeyPatch, recorded: Recorded
) -> None:
    calls: list[dict[str, Any]] = []
    import azure.monitor.opentelemetry as distro

    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    assert telemetry.configure(None, {}) is False
    telemetry.use_providers_for_tests(None, None)
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x.example/"
    assert telemetry.configure(None, {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection,
                                      "TELEMETRY_ENABLED": "false"}) is False  # fmt: skip
    assert calls == []
    telemetry.use_providers_for_tests(None, None)
    assert telemetry.configure(None, {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection}) is True
    assert telemetry.configure(None, {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection}) is True
    assert len(calls) == 1, "once per worker"
    options = calls[0]["instrumentation_options"]
    assert all(options[name] == {"enabled": False} for name in ("azure_sdk", "requests", "urllib", "urllib3"))
    assert calls[0]["logger_name"] == "shared"
    assert calls[0]["enable_performance_counters"] is False
    assert calls[0]["sampling_ratio"] == 1.0, "whole traces: the distro's spans-per-second default drops run spans"


def test_a_distro_that_fails_leaves_telemetry_off_and_the_invocation_going(
    monkeypatch: pytest.MonkeyPatch, recorded: Recorded
) -> None:
    import azure.monitor.opentelemetry as distro

    def broken(**kwargs: Any) -> None:
        raise ValueError("Invalid instrumentation key")

    monkeypatch.setattr(distro, "configure_azure_monitor", broken)
    connection = "InstrumentationKey=nope;IngestionEndpoint=https://x.example/"
    assert telemetry.configure(None, {"APPLICATIONINSIGHTS_CONNECTION_STRING": connection}) is False


def test_indexing_imports_no_opentelemetry() -> None:
    import subprocess
    import sys

    from tests.devstack_process import ROOT

    probe = (
        "import function_app, sys; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'azure.monitor'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "cold start must not pay for the distro"


@pytest.mark.parametrize(
    ("path", "name"),
    [("WhoAmI", "WhoAmI"), ("accounts(accountnumber='C000%3269')", "accounts"), ("$batch", "$batch"),
     ("/accounts?$filter=name eq 'x'", "accounts"), ("https://org.example/api/data/v9.2/contacts(1)", "contacts"),
     ("../../secrets/x", "other"), ("", "other"), ("accounts%2F..", "other")],
)  # fmt: skip
def test_a_request_is_named_by_its_entity_set_or_function_only(path: str, name: str) -> None:
    assert telemetry.operation_name(path) == name


@given(st.text(max_size=200))
def test_no_path_becomes_a_name_with_a_key_a_query_or_a_separator(path: str) -> None:
    name = telemetry.operation_name(path)
    assert name == "other" or re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_.$]{0,99}", name)
    assert not set(name) & set("()'?/=% &\\\"")


def test_a_run_span_holds_its_outcome(recorded: Recorded) -> None:
    from shared.sync.run import SyncRun
    from tests.fakes.sync_store import FakeSyncStore

    with SyncRun("accounts", "inbound", FakeSyncStore(), None) as run:
        run.report.written = 3
    (finished,) = [s for s in recorded.spans.get_finished_spans() if s.name == "sync.run"]
    assert finished.attributes is not None
    assert finished.attributes["dvbridge.run.status"] == "succeeded"
    assert finished.attributes["dvbridge.run.written"] == 3


def test_every_point_the_app_records_is_in_the_contract(recorded: Recorded) -> None:
    """What infra/'s queries rely on: no attribute or value outside shared.telemetry.CONTRACT."""
    telemetry.record_run(RunReport("accounts", "r", "t", status="fanned_out", rows_read=2, written=1, failed=1))
    for status, code in ((200, None), (304, None), (429, "0x80072322"), (429, None), (503, None), (None, None)):
        telemetry.record_dataverse_response(status, code)
    for outcome in ("received", "processed", "duplicate", "stale"):
        telemetry.record_webhook("erp", outcome, received_at=1.0)
    telemetry.record_token("cache")
    telemetry.record_credential_days_left("kv-secret:dvbridge-dev:dataverse-client-secret", "keyvault-secret", 12.5)
    checked = 0
    for spec in telemetry.CONTRACT:
        for attributes, _point in recorded.points(spec.name):
            checked += 1
            assert set(attributes) <= set(spec.attributes), (spec.name, attributes)
            for key, value in attributes.items():
                allowed = spec.attributes[key]
                assert allowed is None or value in allowed, (spec.name, key, value)
    assert checked >= 12
    assert recorded.sums(telemetry.DATAVERSE_REQUESTS)[(("status_class", "4xx"), ("throttle_code", "unknown"))] == 1


def test_traced_takes_the_runtimes_context_and_its_spans_continue_the_hosts_trace(recorded: Recorded) -> None:
    import inspect
    from types import SimpleNamespace

    import azure.functions as func

    from shared.composition import traced

    def handler(req: func.HttpRequest) -> str:
        with telemetry.span("inside"):
            return "done"

    wrapped = traced(handler)
    parameter = inspect.signature(wrapped).parameters["context"]
    assert (parameter.kind, parameter.annotation) == (inspect.Parameter.KEYWORD_ONLY, func.Context)
    assert "context" not in inspect.signature(handler).parameters, "the original is left as it was"
    host = SimpleNamespace(trace_context=SimpleNamespace(
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", trace_state=""))  # fmt: skip
    assert wrapped(None, context=host) == "done"
    assert wrapped(None) == "done", "called without a context (a test, the doctor's CLI): no trace to continue"
    first, second = [s for s in recorded.spans.get_finished_spans() if s.name == "inside"]
    assert f"{first.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert first.parent is not None
    assert f"{first.parent.span_id:016x}" == "b7ad6b7169203331"
    assert second.parent is None, "the host's context was detached after the invocation"


def test_traced_leaves_a_coroutine_and_a_function_taking_context_alone() -> None:
    import azure.functions as func

    from shared.composition import traced

    async def handler(req: func.HttpRequest) -> None:
        return None

    def takes(req: func.HttpRequest, context: func.Context) -> None:
        return None

    assert traced(handler) is handler
    assert traced(takes) is takes


def test_every_function_of_the_app_is_traced() -> None:
    """In a fresh interpreter, as the worker indexes it (get_functions() may run only once per app)."""
    import json
    import subprocess
    import sys

    from tests.devstack_process import ROOT

    probe = ("import inspect, json, function_app; fs = function_app.app.get_functions(); print(json.dumps("
             "[len(fs), [f.get_function_name() for f in fs"
             " if 'context' not in inspect.signature(f.get_user_function()).parameters]]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    count, untraced = json.loads(out.stdout.strip().splitlines()[-1])
    assert count >= 25
    assert untraced == []


def test_every_watched_queue_and_its_poison_queue_report_their_backlog() -> None:
    telemetry.watch_queue("work")
    reader = InMemoryMetricReader()

    def backlog(queue: str) -> int:
        if queue == "unreadable":
            raise ConnectionError("storage down")
        return {"work": 3, "work-poison": 0}.get(queue, 0)

    telemetry.watch_queue("unreadable")
    telemetry.observe_queues(backlog, MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    points = {p.attributes["queue"]: p.value for r in data.resource_metrics for s in r.scope_metrics
              for m in s.metrics if m.name == telemetry.QUEUE_BACKLOG for p in m.data.data_points}  # fmt: skip
    assert points["work"] == 3
    assert points["work-poison"] == 0, "an empty poison queue reports 0, so its alert can resolve"
    assert "unreadable" not in points
    assert points["unreadable-poison"] == 0
    telemetry._watched_queues -= {"work", "unreadable"}


def test_the_doors_watch_the_queues_their_capabilities_use() -> None:
    from shared.sync.fanout import CHUNK_QUEUE
    from shared.sync.functions import CHUNK_QUEUE_NAME
    from shared.webhooks.functions import EVENT_QUEUE_NAME
    from shared.webhooks.processor import EVENT_QUEUE

    assert (CHUNK_QUEUE_NAME, EVENT_QUEUE_NAME) == (CHUNK_QUEUE, EVENT_QUEUE)
    assert {CHUNK_QUEUE, EVENT_QUEUE} <= telemetry._watched_queues


def test_a_dead_lettered_webhook_event_is_counted_on_its_route(recorded: Recorded) -> None:
    from shared.dataverse.schema import TableMetadata
    from shared.mapping.mapper import Rejection
    from shared.webhooks import processor
    from tests.fakes.event_storage import FakeEventDataverse, FakeEventStorage

    storage = FakeEventStorage()
    ctx = processor.HandlerContext(storage, FakeEventDataverse(), TableMetadata(FakeEventDataverse()))  # type: ignore[arg-type]
    processor._dead_letter(ctx, "erp", "k-1", {"customer_no": "C-1"}, Rejection("TooLong", "too long", "name"))
    assert storage.in_container(processor.DEAD_LETTER_CONTAINER), "the dead letter itself"
    assert recorded.sums(telemetry.WEBHOOK_EVENTS) == {(("outcome", "dead_lettered"), ("route", "erp")): 1}
