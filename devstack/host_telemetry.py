"""The local host's side of the Functions host's OpenTelemetry mode (docs/local-host.md, "Tracing").

What the real host does, read in its source (Azure/azure-functions-host, Azure/azure-webjobs-sdk, the .NET
Azure Monitor exporter) and in Microsoft's "Use OpenTelemetry with Azure Functions" page:

* ``"telemetryMode": "OpenTelemetry"`` at the root of host.json (or the app setting
  ``AzureFunctionsJobHost__telemetryMode``) makes the host trace with OpenTelemetry; with
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set it exports to Application Insights with the Azure Monitor
  exporter, authenticating with ``ManagedIdentityCredential(ClientId)`` when
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` is set.
* Every ``InvocationRequest`` carries ``RpcTraceContext{trace_parent = Activity.Current.Id, trace_state =
  Activity.Current.TraceStateString, attributes = Activity.Current.Tags}``: the span current when the host
  invokes the function is the parent of whatever the worker opens.
* An HTTP trigger's current span is ASP.NET Core's server span for the request (it continues an incoming W3C
  ``traceparent``): named ``<METHOD> <route template>`` with ``http.route`` and ``faas.trigger=http`` added
  when the response is written. Requests whose Host is 127.0.0.1 are not traced there (nor a few /admin/
  probes).
* A trigger no instrumentation covers (timer, Storage queue) has no current span, so the host starts one for
  the whole run: a new root, kind Server, named after the function's log name (``Functions.<name>``).
* The exporter maps a Server span to a request item: envelope ``name`` "Request", ``time`` the start
  (``yyyy-MM-ddTHH:mm:ss.fffffffZ``), tags ``ai.operation.id`` (trace id), ``ai.operation.parentId`` (the
  parent span id, when there is one), ``ai.operation.name``; ``RequestData`` with ``id`` the span id, ``name``
  (``<METHOD> <http.route>`` for HTTP, else the span's name), ``duration`` (a TimeSpan, ``[d.]hh:mm:ss.fffffff``),
  ``responseCode`` (the HTTP status, else "0"), ``success`` (HTTP: status below 400; others: the span's status
  is not Error), ``url`` (HTTP); unmapped attributes go to ``properties``.
* The exporter batches as the OpenTelemetry .NET SDK does: ``OTEL_BSP_SCHEDULE_DELAY`` (5000 ms),
  ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048, spans beyond it are dropped), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512).
* Workers that say ``WorkerOpenTelemetryEnabled`` in their ``WorkerInitResponse`` send their own telemetry:
  the host stops exporting the worker's log lines (``Function.*``); devstack exports no log lines anyway.

UNCONFIRMED, chosen here (the settings below change them):

* the attributes: the Java, Node and .NET workers read ``ProcessId``, ``LogLevel``, ``Category`` and
  ``HostInstanceId`` from ``RpcTraceContext.attributes``; devstack sends those four (its pid, "Information",
  ``Function.<name>``, one GUID per host start), not the HTTP span's own tags
  (``DEVSTACK_HOST_TRACE_ATTRIBUTES=none`` sends none);
* the route template in an HTTP request's name (``api/<route>``, the route prefix included), the flags
  (always ``01``: the exporter's default sampler keeps every trace), ``tracestate`` kept only up to 512
  characters, ``url`` without its query (the real host redacts it; devstack drops it, ``?code=`` is a key);
* the loopback rule: devstack traces requests to 127.0.0.1 like any other, since every local request is one
  (``DEVSTACK_HOST_TRACE_LOOPBACK=azure`` applies the real host's rule: such a request gets the
  ``Functions.<name>`` root span);
* an admin run (``POST /admin/functions/<name>``) gets a ``Functions.<name>`` root span, and the admin request
  itself is not exported; an Event Grid delivery is one HTTP request span (``POST /runtime/webhooks/eventgrid``,
  no route template) that every event's invocation is a child of; a request no function's route matches is
  exported as ``<METHOD> <path>``;
* ``ai.cloud.role`` (``WEBSITE_SITE_NAME``, else the app directory's name), ``ai.cloud.roleInstance`` (the
  machine's name), ``ai.internal.sdkVersion`` (devstack's own), and the retry of a failed batch (three tries, a
  206's retryable items again), which stands in for the exporter's offline storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.rpc import function_rpc_pb2 as protos

OPEN_TELEMETRY_MODE = "opentelemetry"  # host.json telemetryMode, compared without case as the host parses it
WORKER_OPEN_TELEMETRY_CAPABILITY = "WorkerOpenTelemetryEnabled"
CONNECTION_STRING_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_STRING_SETTING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
ATTRIBUTES_SETTING = "DEVSTACK_HOST_TRACE_ATTRIBUTES"  # "host" (default) or "none"
LOOPBACK_SETTING = "DEVSTACK_HOST_TRACE_LOOPBACK"  # "trace" (default) or "azure"
DEFAULT_INGESTION_ENDPOINT = "https://dc.services.visualstudio.com/"
MONITOR_SCOPE = "https://monitor.azure.com//.default"  # what the Azure Monitor exporters ask for
TRACK_PATH = "/v2.1/track"
SCHEDULE_DELAY_SETTING, SCHEDULE_DELAY_MS = "OTEL_BSP_SCHEDULE_DELAY", 5000
MAX_QUEUE_SETTING, MAX_QUEUE = "OTEL_BSP_MAX_QUEUE_SIZE", 2048
MAX_BATCH_SETTING, MAX_BATCH = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512
EXPORT_TIMEOUT_S = 10.0
SEND_TRIES = 3
RETRYABLE = frozenset({401, 403, 408, 429, 500, 502, 503, 504})  # the exporters keep these items for later
STOP_FLUSH_S = 3.0
MAX_TRACE_STATE = 512
LOOPBACK_HOST = "127.0.0.1"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A W3C ``traceparent`` header, or None when it is not a valid one (version ``ff``, an all-zero id,
    upper-case hex, a version-00 header with more fields; a later version may carry more after a dash)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return TraceParent(trace_id, span_id, flags)


def new_trace_id() -> str:
    while (value := secrets.token_hex(16)) == "0" * 32:
        continue
    return value


def new_span_id() -> str:
    while (value := secrets.token_hex(8)) == "0" * 16:
        continue
    return value


def timespan(seconds: float) -> str:
    """.NET's TimeSpan "c" format, as the exporter writes a duration: ``[d.]hh:mm:ss.fffffff``."""
    ticks = max(0, round(seconds * 10_000_000))
    whole, fraction = divmod(ticks, 10_000_000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}.{fraction:07d}"
    return f"{days}.{text}" if days else text


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"  # seven digits, as .NET writes it


@dataclass
class InvocationSpan:
    """The host's span around one invocation (or one HTTP request): what the worker is told is its parent,
    and what the host exports when it ends."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None = None
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)  # RpcTraceContext.attributes
    url: str | None = None  # set for an HTTP request
    properties: dict[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    duration_s: float | None = None
    success: bool = True
    result_code: str = "0"

    @property
    def traceparent(self) -> str:
        return TraceParent(self.trace_id, self.span_id).header()

    def rpc_trace_context(self) -> Any:
        return protos.RpcTraceContext(
            trace_parent=self.traceparent, trace_state=self.trace_state, attributes=self.attributes
        )

    def end(self, *, status_code: int | None = None, failed: bool = False) -> None:
        if self.duration_s is not None:
            return
        self.duration_s = time.perf_counter() - self.started
        if status_code is not None:
            self.result_code = str(status_code)
            self.success = 0 < status_code < 400 and not failed
        else:
            self.success = not failed

    def envelope(self, instrumentation_key: str, role: str, role_instance: str) -> dict[str, Any]:
        """The request item the host's Azure Monitor exporter makes of this span."""
        tags = {
            "ai.operation.id": self.trace_id,
            "ai.operation.name": self.name,
            "ai.cloud.role": role,
            "ai.cloud.roleInstance": role_instance,
            "ai.internal.sdkVersion": "devstack-host:otel",
        }
        if self.parent_id:
            tags["ai.operation.parentId"] = self.parent_id
        base: dict[str, Any] = {
            "ver": 2,
            "id": self.span_id,
            "name": self.name,
            "duration": timespan(self.duration_s or 0.0),
            "success": self.success,
            "responseCode": self.result_code,
        }
        if self.url:
            base["url"] = self.url
        if self.properties:
            base["properties"] = dict(self.properties)
        return {
            "ver": 1,
            "name": "Request",
            "time": _timestamp(self.started_at),
            "sampleRate": 100.0,
            "iKey": instrumentation_key,
            "tags": tags,
            "data": {"baseType": "RequestData", "baseData": base},
        }


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` with the keys lower-cased (the SDKs read them without case)."""
    parts = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {key.strip().lower(): value.strip() for key, value in parts}


class RequestExporter:
    """The host's request items to ``POST {IngestionEndpoint}/v2.1/track``, in batches from one daemon thread.

    ``submit`` never blocks and never raises: beyond the queue's bound an item is dropped (and counted), a
    batch that cannot be sent is logged and dropped after ``SEND_TRIES``."""

    def __init__(
        self,
        connection_string: str,
        settings: Mapping[str, str],
        log: Callable[[str], None],
        *,
        send: Callable[[list[dict[str, Any]]], tuple[int, dict[str, Any]]] | None = None,
    ) -> None:
        parts = parse_connection_string(connection_string)
        self.instrumentation_key = parts.get("instrumentationkey", "")
        self.endpoint = (parts.get("ingestionendpoint") or DEFAULT_INGESTION_ENDPOINT).rstrip("/")
        self.url = self.endpoint + TRACK_PATH
        self.settings = settings
        self.log = log
        self.delay_s = _positive(settings, SCHEDULE_DELAY_SETTING, SCHEDULE_DELAY_MS) / 1000
        self.batch_size = int(_positive(settings, MAX_BATCH_SETTING, MAX_BATCH))
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(int(_positive(settings, MAX_QUEUE_SETTING, MAX_QUEUE)))
        self.dropped = 0
        self.sent = 0
        self.failed = 0
        self._send = send or self._post
        self._credential: Any = None
        self._session: Any = None
        self._stop = threading.Event()
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # started by the first item

    def submit(self, envelope: dict[str, Any]) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True, name="host-telemetry")
                self._thread.start()
        try:
            self.queue.put_nowait(envelope)
        except queue.Full:
            self.dropped += 1
            self._once("full", "Host telemetry: the export queue is full; request items are dropped"
                       f" ({MAX_QUEUE_SETTING})")  # fmt: skip

    def stop(self, timeout_s: float = STOP_FLUSH_S) -> None:
        """Send what is queued (for at most ``timeout_s``) and end the thread."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                try:
                    self._deliver(batch)
                except Exception as exc:  # the thread outlives any answer it did not expect
                    self.failed += len(batch)
                    self._once("deliver", f"Host telemetry: a batch was dropped ({type(exc).__name__})")
            elif self._stop.is_set():
                return

    def _take(self) -> list[dict[str, Any]]:
        """Up to a batch: waits at most the schedule delay for the first item (not at all when stopping)."""
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.delay_s
        while len(batch) < self.batch_size:
            if self._stop.is_set():
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=min(remaining, 0.1)))
            except queue.Empty:
                continue
        return batch

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        pending = batch
        for attempt in range(SEND_TRIES):
            try:
                status, answer = self._send(pending)
            except Exception as exc:  # a batch that cannot be sent is never a reason for an invocation to fail
                status, answer = 0, {"error": f"{type(exc).__name__}: {exc}"}
            if status == 200:
                self.sent += len(pending)
                return
            if status == 206:
                errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
                indices = {e.get("index") for e in errors if e.get("statusCode") in RETRYABLE}
                retry = [item for index, item in enumerate(pending) if index in indices]
                self.sent += len(pending) - len(errors)
                self.failed += len(errors) - len(retry)
                pending = retry
                if not pending:
                    return
            elif status not in RETRYABLE and status != 0:
                break
            if self._stop.is_set() or attempt == SEND_TRIES - 1:
                break
            self._stop.wait(min(30.0, 2.0**attempt))
        self.failed += len(pending)
        self._once(f"send {status}", f"Host telemetry: {len(pending)} request item(s) not sent to {self.url}"
                   f" ({status or answer.get('error')})")  # fmt: skip

    def _post(self, batch: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.verify = self.settings.get("REQUESTS_CA_BUNDLE") or True
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self._session.post(self.url, data=json.dumps(batch), headers=headers, timeout=EXPORT_TIMEOUT_S)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}

    def _token(self) -> str | None:
        """A managed-identity token for Azure Monitor when the authentication string says ``Authorization=AAD``
        (``;ClientId=`` names a user-assigned identity), as the host builds ``ManagedIdentityCredential``."""
        auth = parse_connection_string(self.settings.get(AUTHENTICATION_STRING_SETTING) or "")
        if auth.get("authorization", "").upper() != "AAD":
            return None
        if self._credential is None:
            from azure.identity import ManagedIdentityCredential

            client_id = auth.get("clientid")
            self._credential = (
                ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            )
        return str(self._credential.get_token(MONITOR_SCOPE).token)

    def _once(self, key: str, line: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log(line)


def _positive(settings: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(str(settings.get(name) or default))
    except ValueError:
        return default
    return value if value > 0 else default


class HostTracing:
    """Per host: makes each invocation's span, and exports it in OpenTelemetry mode with a connection string."""

    def __init__(
        self,
        host_json: Mapping[str, Any],
        settings: Mapping[str, str],
        app_dir: Path,
        log: Callable[[str], None],
        *,
        exporter: RequestExporter | None = None,
    ) -> None:
        self.mode = str(host_json.get("telemetryMode") or "ApplicationInsights")
        self.open_telemetry = self.mode.lower() == OPEN_TELEMETRY_MODE
        self.host_instance_id = secrets.token_hex(16)
        self.attributes_on = (settings.get(ATTRIBUTES_SETTING) or "host").lower() != "none"
        self.azure_loopback = (settings.get(LOOPBACK_SETTING) or "trace").lower() == "azure"
        self.role = settings.get("WEBSITE_SITE_NAME") or app_dir.name
        self.role_instance = socket.gethostname()
        connection = settings.get(CONNECTION_STRING_SETTING) or ""
        self.exporter = exporter
        if self.exporter is None and self.open_telemetry and connection:
            self.exporter = RequestExporter(connection, settings, log)
            log(f"Telemetry mode OpenTelemetry: the host's requests go to Application Insights at {self.exporter.url}")

    def attributes(self, function_name: str) -> dict[str, str]:
        """``RpcTraceContext.attributes`` for an invocation of ``function_name``."""
        if not self.attributes_on:
            return {}
        return {
            "ProcessId": str(os.getpid()),
            "LogLevel": "Information",
            "Category": f"Function.{function_name}",
            "HostInstanceId": self.host_instance_id,
        }

    def trigger_span(self, function_name: str) -> InvocationSpan:
        """A trigger no instrumentation covers: a new trace, named after the function's log name."""
        return InvocationSpan(
            f"Functions.{function_name}", new_trace_id(), new_span_id(), attributes=self.attributes(function_name)
        )

    def http_span(self, method: str, url: str, headers: Any, *, host_header: str = "") -> InvocationSpan | None:
        """ASP.NET Core's server span for a request: it continues a valid incoming ``traceparent`` (a repeated
        one is not valid) with its ``tracestate``. None when the real host's loopback rule applies
        (``DEVSTACK_HOST_TRACE_LOOPBACK=azure``). Named ``<METHOD> <path>`` until a route matches."""
        if self.azure_loopback and host_header.rsplit(":", 1)[0] == LOOPBACK_HOST:
            return None
        values = list(headers.getlist("traceparent")) if hasattr(headers, "getlist") else []
        if not values and headers.get("traceparent") is not None:
            values = [headers.get("traceparent")]
        incoming = parse_traceparent(values[0]) if len(values) == 1 else None
        state = ""
        if incoming is not None:
            state = str(headers.get("tracestate") or "")
            state = state if len(state) <= MAX_TRACE_STATE else ""
        path = url.split("?", 1)[0]
        return InvocationSpan(
            f"{method.upper()} {_path_of(path)}",
            incoming.trace_id if incoming else new_trace_id(),
            new_span_id(),
            parent_id=incoming.span_id if incoming else None,
            trace_state=state,
            url=path,
            properties={"faas.trigger": "http"},
        )

    def matched(self, span: InvocationSpan, method: str, route_template: str, function_name: str) -> None:
        """The request's route matched a function: the span takes the route template and the invocation's
        attributes."""
        span.name = f"{method.upper()} {route_template}"
        span.attributes = self.attributes(function_name)

    def finish(self, span: InvocationSpan | None, *, status_code: int | None = None, failed: bool = False) -> None:
        """End the span and hand its request item to the exporter (in OpenTelemetry mode); never raises."""
        if span is None:
            return
        span.end(status_code=status_code, failed=failed)
        if self.exporter is not None:
            with contextlib.suppress(Exception):
                key = self.exporter.instrumentation_key
                self.exporter.submit(span.envelope(key, self.role, self.role_instance))

    def stop(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()


def _path_of(url: str) -> str:
    if "://" in url:
        rest = url.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return url
