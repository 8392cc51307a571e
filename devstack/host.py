"""A local Functions host (docs/local-host.md): the host's side of what ``func start`` runs, for the Python v2 model.

The app never runs in this process. :class:`devstack.worker_channel.WorkerPool` starts Python workers
(``devstack.worker_proxy``, which loads the app's pinned ``azure-functions-runtime``; as many as
``FUNCTIONS_WORKER_PROCESS_COUNT``, 1 unless set) and talks to them over FunctionRpc; this module does what
the host does around that:

* **Indexing** comes from the worker's metadata (``raw_bindings``); ``%NAME%`` in a binding is resolved
  here from the app settings (the environment, then ``local.settings.json`` ``Values``): an unresolvable
  one disables that function, with the host's wording, and every other function runs.
* **HTTP** at ``/api/<route>`` with route templates (``{id}``, ``{id:int}``, ``{name:alpha}``, ``{x?}``),
  methods and auth levels; keys live in ``<state>/host-keys.json``; ``x-functions-key`` or ``?code=``.
* **Timers** on six-field NCRONTAB schedules (croniter, seconds first), ``runOnStartup``.
* **Queues** on Azurite honouring ``host.json`` (batch size, new-batch threshold, polling interval,
  visibility timeout, max dequeue count → ``<queue>-poison``), base64 messages; queue outputs.
* **Event Grid** at ``POST /runtime/webhooks/eventgrid?functionName=<name>`` (with the validation
  handshake), and ``POST /admin/functions/<name>`` (master key only, as every ``/admin/`` API) to run any
  non-HTTP function now.
* One log line per invocation start and end, in Core Tools' words; ``functionTimeout`` enforced by
  replacing the worker, since the runtime cannot cancel an invocation.
* A W3C trace context per invocation in ``InvocationRequest.trace_context`` (an HTTP request's continues an
  incoming ``traceparent``), and with host.json ``"telemetryMode": "OpenTelemetry"`` and a connection string
  the host's own request items exported to Application Insights (:mod:`devstack.host_telemetry`).

Payloads cross as ``TypedData``: ``RpcHttp`` for requests and responses, the timer's JSON, the queue
message's text with its trigger metadata, the Event Grid event's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.host_telemetry import HostTracing, InvocationSpan
from devstack.rpc import function_rpc_pb2 as protos
from devstack.worker_channel import WorkerError, WorkerPool, raw_bindings

DEFAULT_FUNCTION_TIMEOUT_S = 1800  # Flex Consumption's default when host.json says nothing
QUEUE_DEFAULTS = {
    "batchSize": 16,
    "newBatchThreshold": 8,
    "maxPollingInterval": "00:01:00",
    "visibilityTimeout": "00:00:00",
    "maxDequeueCount": 5,
}
MIN_POLLING_INTERVAL_S = 0.1  # the host starts polling fast and backs off to maxPollingInterval
# A received message stays invisible while its invocation runs: 10 minutes, as the Functions host's queue
# listener holds it, so the messages of a host that died come back only then.
QUEUE_LEASE_S = 600
# A shorter lease (seconds) for tests that kill hosts and run time-scaled; not an app setting.
QUEUE_LEASE_SETTING = "DEVSTACK_HOST_MESSAGE_LEASE_S"
STORAGE_THREADS = 8  # queue polling and sends are blocking SDK calls
ADMIN_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ROUTE_CONSTRAINTS = {"int": r"-?\d+", "alpha": r"[A-Za-z]+", "guid": r"[0-9a-fA-F-]{36}", "bool": r"true|false"}
PLACEHOLDER = re.compile(r"%([^%]+)%")
HOST_OVERRIDE_PREFIX = "AzureFunctionsJobHost__"
LOCAL_SETTINGS = "local.settings.json"
LOCAL_SETTINGS_EXAMPLE = "local.settings.json.example"
API_PREFIX = "/api/"
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
PROGRAMMATIC = "This function was programmatically called via the host APIs."


class FunctionLoadError(RuntimeError):
    """The app cannot be indexed: the runtime's own message."""


class InvocationFailed(RuntimeError):
    """An invocation ended as Failed (the function raised, timed out, or its worker went away)."""


def timespan_seconds(value: str) -> float:
    """``hh:mm:ss`` (or ``d.hh:mm:ss``) as host.json writes durations."""
    days = 0
    if "." in value.split(":")[0]:
        day_text, value = value.split(".", 1)
        days = int(day_text)
    hours, minutes, seconds = (float(p) for p in value.split(":"))
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


# -- log ----------------------------------------------------------------------------------------------
class HostLog:
    """Where invocation log lines go: stdout (the default), or a file with an optional echo to stdout."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._echo = True
        self._lock = threading.Lock()
        self._held: list[str] | None = None

    def hold(self) -> None:
        """Keep stdout lines back (a process's first stdout line is its ready line) until ``release()``."""
        self._held = []

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
            for line in held:
                print(line, flush=True)

    path: Path | None = None

    def to_file(self, path: Path, *, echo: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._echo = echo

    def write(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        line = f"[{stamp}] {text}"
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self._echo or self._file is None:
                if self._held is not None:
                    self._held.append(line)
                else:
                    print(line, flush=True)


HOST_LOG = HostLog()


def log_line(text: str) -> None:
    HOST_LOG.write(text)


# -- app settings -------------------------------------------------------------------------------------
def load_app_settings(app_dir: Path, environ: dict[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """The app settings the host resolves ``%NAME%`` from and gives the worker: ``local.settings.json``
    ``Values`` (``local.settings.json.example`` on a fresh clone), then the environment on top, as Core
    Tools does. Returns the settings and the file read, if any."""
    settings: dict[str, str] = {}
    source = None
    for name in (LOCAL_SETTINGS, LOCAL_SETTINGS_EXAMPLE):
        path = app_dir / name
        if path.exists():
            values = json.loads(path.read_text()).get("Values") or {}
            settings.update({str(k): str(v) for k, v in values.items()})
            source = name
            break
    settings.update(os.environ if environ is None else environ)
    return settings, source


def _apply_host_overrides(host_json: dict[str, Any], settings: dict[str, str]) -> None:
    """App settings ``AzureFunctionsJobHost__a__b=value`` override host.json's ``a.b``, as the host does."""
    for name, value in settings.items():
        if not name.startswith(HOST_OVERRIDE_PREFIX):
            continue
        *parents, leaf = name[len(HOST_OVERRIDE_PREFIX) :].split("__")
        node = host_json
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = int(value) if value.isdigit() else value


class UnresolvedSetting(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"'%{name}%' does not resolve to a value.")
        self.setting = name


def resolve(value: Any, settings: dict[str, str]) -> Any:
    """``%NAME%`` inside any string of a binding, from the app settings; raises UnresolvedSetting."""
    if isinstance(value, str):

        def setting(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in settings:
                raise UnresolvedSetting(name)
            return settings[name]

        return PLACEHOLDER.sub(setting, value)
    if isinstance(value, list):
        return [resolve(v, settings) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, settings) for k, v in value.items()}
    return value


# -- functions ----------------------------------------------------------------------------------------
@dataclass
class FunctionInfo:
    name: str
    trigger_type: str
    trigger_param: str
    bindings: list[dict[str, Any]]  # resolved
    declared: dict[str, Any] = field(default_factory=dict)  # the trigger binding as the worker reported it
    auth_level: str | None = None
    route: str | None = None
    methods: list[str] = field(default_factory=list)
    schedule: str | None = None  # as declared, e.g. "%SYNC_SCHEDULE_ACCOUNTS%"
    resolved_schedule: str | None = None  # after app-setting resolution: what the timer runs on
    run_on_startup: bool = False
    queue_name: str | None = None
    connection: str | None = None
    disabled: str | None = None  # why the host disabled it at indexing

    @property
    def queue_outputs(self) -> dict[str, dict[str, Any]]:
        return {
            b["name"]: b
            for b in self.bindings
            if b.get("type") == "queue" and str(b.get("direction", "")).lower() == "out"
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trigger": self.trigger_type,
            "route": self.route,
            "methods": self.methods,
            "auth_level": self.auth_level,
            "schedule": self.schedule,
            "resolved_schedule": self.resolved_schedule,
            "run_on_startup": self.run_on_startup,
            "queue": self.queue_name,
            "disabled": self.disabled,
        }


def function_info(metadata: Any, settings: dict[str, str]) -> FunctionInfo:
    """One function as the host indexes it from the worker's metadata."""
    declared = raw_bindings(metadata)
    trigger = next((b for b in declared if str(b.get("type", "")).endswith("Trigger")), None)
    if trigger is None:
        return FunctionInfo(metadata.name, "", "", declared, disabled="it has no trigger binding")
    info = FunctionInfo(metadata.name, str(trigger["type"]), str(trigger.get("name", "")), declared, trigger)
    try:
        info.bindings = [resolve(b, settings) for b in declared]
    except UnresolvedSetting as exc:
        info.disabled = str(exc)
    resolved = next(b for b in info.bindings if b.get("type") == info.trigger_type) if not info.disabled else trigger
    if info.trigger_type == "httpTrigger":
        info.auth_level = str(trigger.get("authLevel") or "function").lower()
        info.route = str(resolved.get("route") or info.name)
        info.methods = [str(m).upper() for m in (trigger.get("methods") or [])] or list(ADMIN_METHODS)
    elif info.trigger_type == "timerTrigger":
        info.schedule = str(trigger.get("schedule"))
        info.run_on_startup = bool(trigger.get("runOnStartup", False))
        if not info.disabled:
            info.resolved_schedule = str(resolved.get("schedule"))
            if not _valid_schedule(info.resolved_schedule):
                info.disabled = (
                    f"The schedule expression '{info.resolved_schedule}' was not recognized as a valid cron"
                    " expression or timespan string."
                )
    elif info.trigger_type == "queueTrigger":
        info.queue_name = str(resolved.get("queueName"))
        info.connection = str(resolved.get("connection") or "AzureWebJobsStorage")
    return info


def _valid_schedule(expression: str) -> bool:
    from croniter import croniter

    return len(expression.split()) == 6 and bool(croniter.is_valid(expression, second_at_beginning=True))


@dataclass
class HostKeys:
    master: str
    host: str
    eventgrid: str
    functions: dict[str, str]

    @classmethod
    def load_or_create(cls, path: Path, function_names: list[str]) -> HostKeys:
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        keys = cls(
            master=data.get("masterKey") or secrets.token_urlsafe(32),
            host=(data.get("functionKeys") or {}).get("default") or secrets.token_urlsafe(32),
            eventgrid=(data.get("systemKeys") or {}).get("eventgrid_extension") or secrets.token_urlsafe(32),
            functions={
                n: (data.get("functions") or {}).get(n, {}).get("default") or secrets.token_urlsafe(32)
                for n in function_names
            },
        )
        path.write_text(
            json.dumps(
                {
                    "masterKey": keys.master,
                    "functionKeys": {"default": keys.host},
                    "systemKeys": {"eventgrid_extension": keys.eventgrid},
                    "functions": {n: {"default": k} for n, k in keys.functions.items()},
                },
                indent=2,
            )
        )
        path.chmod(0o600)
        return keys


def _compile_route(template: str) -> tuple[re.Pattern[str], list[str]]:
    """``items/{id:int}/{label?}`` -> a regex; an optional parameter takes its leading slash with it."""
    pattern, names = "", []
    for part in re.split(r"(\{[^}]+\})", template.strip("/")):
        if part.startswith("{") and part.endswith("}"):
            spec = part[1:-1]
            optional = spec.endswith("?")
            name, _, constraint = spec.rstrip("?").partition(":")
            names.append(name)
            group = f"(?P<{name}>{ROUTE_CONSTRAINTS.get(constraint, r'[^/]+')})"
            if optional and pattern.endswith("/"):
                pattern = pattern[:-1] + f"(?:/{group})?"
            else:
                pattern += group + ("?" if optional else "")
        else:
            pattern += re.escape(part)
    return re.compile(f"^{pattern}/?\\Z", re.I), names  # \Z: `$` would also match before a final newline


def _key_matches(supplied: str, allowed: list[str]) -> bool:
    """Every key is compared (no early exit), each in constant time, so the answer's timing says nothing;
    as bytes, because ``compare_digest`` refuses a str with non-ASCII characters (a header can carry them)."""
    matches = [secrets.compare_digest(supplied.encode(), key.encode()) for key in allowed]
    return any(matches)


class LocalHost:
    """Serves one app through its worker. ``await index()`` starts the worker and indexes; the ASGI app
    serves HTTP; ``await start()`` begins timers and queue listeners; ``await stop()`` ends the worker."""

    def __init__(
        self,
        app_dir: Path,
        state_dir: Path,
        *,
        storage: str | None = None,
        base_url: str = "http://127.0.0.1:7071",
        settings: dict[str, str] | None = None,
        log: Callable[[str], None] = log_line,
    ) -> None:
        self.app_dir = app_dir
        self.state_dir = state_dir
        self.base_url = base_url
        self.log = log
        if settings is None:
            settings, self.settings_file = load_app_settings(app_dir)
        else:
            self.settings_file = None
        self.settings = settings
        self.storage = storage or settings.get("AzureWebJobsStorage")
        host_json = json.loads((app_dir / "host.json").read_text()) if (app_dir / "host.json").exists() else {}
        _apply_host_overrides(host_json, settings)
        self.function_timeout_s = (
            timespan_seconds(host_json["functionTimeout"])
            if host_json.get("functionTimeout")
            else DEFAULT_FUNCTION_TIMEOUT_S
        )
        self.queue_settings = {**QUEUE_DEFAULTS, **((host_json.get("extensions") or {}).get("queues") or {})}
        self.tracing = HostTracing(host_json, settings, app_dir, log)
        self.channel = WorkerPool(app_dir, settings, log)
        self.functions: list[FunctionInfo] = []
        self.by_name: dict[str, FunctionInfo] = {}
        self.routes: list[tuple[FunctionInfo, re.Pattern[str], list[str]]] = []
        self.keys: HostKeys  # by index(), from the functions the worker reported
        self.pool: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: list[threading.Thread] = []
        self._queue_clients: dict[tuple[str, str], Any] = {}

    @property
    def enabled(self) -> list[FunctionInfo]:
        return [f for f in self.functions if not f.disabled]

    async def index(self) -> None:
        """Start the worker and index the app from its metadata; raise FunctionLoadError with its reason."""
        from concurrent.futures import ThreadPoolExecutor

        from devstack.worker_channel import IndexingError

        self.pool = ThreadPoolExecutor(max_workers=STORAGE_THREADS, thread_name_prefix="host-storage")
        try:
            metadata = await self.channel.start()
        except IndexingError as exc:
            await self.channel.stop()
            raise FunctionLoadError(str(exc)) from exc
        except (WorkerError, OSError) as exc:
            await self.channel.stop()
            raise FunctionLoadError(f"the Python worker did not start: {exc}") from exc
        self.functions = [function_info(m, self.settings) for m in metadata]
        self.by_name = {f.name: f for f in self.functions}
        for info in self.functions:
            if info.disabled:
                self.log(info.disabled)
                self.log(f"Function 'Functions.{info.name}' failed indexing and will be disabled.")
        self.keys = HostKeys.load_or_create(self.state_dir / "host-keys.json", [f.name for f in self.functions])
        # Literal routes win over templates, as in the real host: webhooks/dataverse before webhooks/{source}.
        http = [(f, *_compile_route(f.route or f.name)) for f in self.enabled if f.trigger_type == "httpTrigger"]
        self.routes = sorted(http, key=lambda entry: len(entry[2]))
        self.log(f"Found {len(self.enabled)} enabled functions ({len(self.functions) - len(self.enabled)} disabled)")

    # -- invocation ------------------------------------------------------------------------------
    async def invoke(
        self,
        info: FunctionInfo,
        data: Any,
        reason: str,
        trigger_metadata: dict[str, Any] | None = None,
        *,
        span: InvocationSpan | None = None,
    ) -> Any:
        """One invocation in the worker; its queue outputs are sent before it counts as Succeeded. ``span``: the
        HTTP request's, which the caller ends; without one the invocation gets a span of its own (a new trace,
        as the host starts one for a trigger no instrumentation covers), ended and exported here."""
        own = span is None
        current = self.tracing.trigger_span(info.name) if span is None else span
        failed = True
        try:
            response = await self._invoke(info, data, reason, trigger_metadata, current)
            failed = False
            return response
        finally:
            if own:
                self.tracing.finish(current, failed=failed)

    async def _invoke(
        self,
        info: FunctionInfo,
        data: Any,
        reason: str,
        trigger_metadata: dict[str, Any] | None,
        span: InvocationSpan,
    ) -> Any:
        invocation_id = str(uuid.uuid4())
        self.log(f"Executing 'Functions.{info.name}' (Reason='{reason}', Id={invocation_id})")
        started = time.monotonic()
        binding = protos.ParameterBinding(name=info.trigger_param, data=data)
        try:
            response = await self.channel.invoke(
                info.name,
                [binding],
                trigger_metadata or {},
                invocation_id=invocation_id,
                timeout_s=self.function_timeout_s,
                trace_context=span.rpc_trace_context(),
            )
        except TimeoutError:
            self.log(
                f"Timeout value of {timedelta(seconds=self.function_timeout_s)} exceeded by function"
                f" 'Functions.{info.name}' (Id: '{invocation_id}'). Initiating cancellation."
            )
            self.log(f"Executed 'Functions.{info.name}' (Failed, Id={invocation_id}, Duration={_ms(started)}ms)")
            # The runtime ignores InvocationCancel: the worker process is replaced, as the host does.
            await self.channel.kill_for(invocation_id, f"functionTimeout exceeded by 'Functions.{info.name}'")
            raise InvocationFailed("timeout") from None
        except WorkerError as exc:
            self.log(f"Executed 'Functions.{info.name}' (Failed, Id={invocation_id}, Duration={_ms(started)}ms)")
            self.log(f"Microsoft.Azure.WebJobs.Script.Workers.WorkerProcessExitException: {exc}")
            raise InvocationFailed(str(exc)) from exc
        if response.result.status != protos.StatusResult.Success:
            self.log(f"Executed 'Functions.{info.name}' (Failed, Id={invocation_id}, Duration={_ms(started)}ms)")
            self.log(f"System.Exception: Result: Failure Exception: {response.result.exception.message}")
            raise InvocationFailed(response.result.exception.message)
        await self._send_outputs(info, response.output_data)
        self.log(f"Executed 'Functions.{info.name}' (Succeeded, Id={invocation_id}, Duration={_ms(started)}ms)")
        return response

    async def _send_outputs(self, info: FunctionInfo, output_data: Any) -> None:
        outputs = info.queue_outputs
        loop = asyncio.get_running_loop()
        for binding in output_data:
            spec = outputs.get(binding.name)
            if spec is None:
                continue
            connection = str(spec.get("connection") or "AzureWebJobsStorage")
            for message in _queue_messages(binding.data):
                await loop.run_in_executor(
                    self.pool, self.send_queue_message, str(spec["queueName"]), message, connection
                )

    # -- storage -----------------------------------------------------------------------------------
    def queue_client(self, name: str, connection: str = "AzureWebJobsStorage") -> Any:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        key = (connection, name)
        if key in self._queue_clients:
            return self._queue_clients[key]
        conn = self.settings.get(connection) or (self.storage if connection == "AzureWebJobsStorage" else None)
        if not conn:
            raise RuntimeError(f"the app setting {connection!r} (a queue binding's connection) is not set")
        client = QueueClient.from_connection_string(
            conn,
            name,
            message_encode_policy=TextBase64EncodePolicy(),  # the host's queue trigger expects base64
            message_decode_policy=TextBase64DecodePolicy(),
        )
        with contextlib.suppress(Exception):
            client.create_queue()
        self._queue_clients[key] = client
        return client

    def send_queue_message(self, queue: str, message: str, connection: str = "AzureWebJobsStorage") -> None:
        self.queue_client(queue, connection).send_message(message)

    # -- HTTP ----------------------------------------------------------------------------------------
    def _authorized(self, request: Request, info: FunctionInfo | None, level: str) -> bool:
        """``admin`` (an HTTP function's authLevel, and everything under ``/admin/``) takes the master key
        only, as in Azure; ``function`` also takes a host key or the function's own key."""
        if level == "anonymous":
            return True
        supplied = request.headers.get("x-functions-key") or request.query_params.get("code") or ""
        allowed = [self.keys.master]
        if level != "admin":
            allowed.append(self.keys.host)
            if info is not None:
                allowed.append(self.keys.functions[info.name])
        return _key_matches(supplied, allowed)

    async def http(self, request: Request, path: str) -> Response:
        """``path``: everything after ``/api/``, decoded, exactly as the client sent it. The request is one span
        (ASP.NET Core's in the real host), whatever its answer; a function it invokes is its child."""
        span = self.tracing.http_span(
            request.method, str(request.url), request.headers, host_header=request.headers.get("host", "")
        )
        status = 500
        try:
            response = await self._http(request, path, span)
            status = response.status_code
            return response
        finally:
            self.tracing.finish(span, status_code=status)

    async def _http(self, request: Request, path: str, span: InvocationSpan | None) -> Response:
        for info, pattern, _ in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if request.method not in info.methods:
                continue
            if span is not None:
                self.tracing.matched(
                    span, request.method, API_PREFIX.strip("/") + "/" + (info.route or info.name), info.name
                )
            if not self._authorized(request, info, info.auth_level or "function"):
                return Response(status_code=401)
            body = await request.body()
            rpc = protos.RpcHttp(
                method=request.method,
                url=str(request.url),
                headers=_joined(request.headers.items()),
                query=_joined(request.query_params.multi_items()),
                params={k: v for k, v in match.groupdict().items() if v is not None},
                body=protos.TypedData(bytes=body),
            )
            try:
                response = await self.invoke(info, protos.TypedData(http=rpc), PROGRAMMATIC, span=span)
            except InvocationFailed:
                return Response(status_code=500)
            return _http_response(response.return_value)
        return Response(status_code=404)

    async def admin_run(self, request: Request) -> Response:
        name = request.path_params["name"]
        info = self.by_name.get(name)
        if not self._authorized(request, None, "admin"):  # Azure: APIs under /admin/ take the master key only
            return Response(status_code=401)
        if info is None or info.disabled:
            return Response(status_code=404)
        if info.trigger_type == "httpTrigger":
            return JSONResponse({"error": "use the function's route to call an HTTP function"}, status_code=400)
        try:
            payload = (await request.json()) or {}
        except ValueError:
            payload = {}
        value = payload.get("input") if isinstance(payload, dict) else None
        asyncio.get_running_loop().create_task(self._run_admin(info, value))
        return Response(status_code=202)

    async def _run_admin(self, info: FunctionInfo, value: Any) -> None:
        metadata: dict[str, Any] = {}
        if info.trigger_type == "timerTrigger":
            data = _timer_data(past_due=False, last=None, next_at=None)
        elif info.trigger_type == "queueTrigger":
            data = protos.TypedData(string=str(value or ""))
            metadata = _queue_metadata(str(uuid.uuid4()), "", 1, None, None, None)
        elif info.trigger_type == "eventGridTrigger":
            event = json.loads(value) if isinstance(value, str) and value else value or {}
            data = protos.TypedData(json=json.dumps(event))
        else:
            data = protos.TypedData(string=str(value or ""))
        with contextlib.suppress(InvocationFailed):
            await self.invoke(info, data, PROGRAMMATIC, metadata)

    async def admin_other(self, request: Request) -> Response:
        """The rest of ``/admin/`` (host status, keys, ...) is not emulated; it is still closed to any key
        but the master key, so no route under it is open by accident."""
        if not self._authorized(request, None, "admin"):
            return Response(status_code=401)
        return Response(status_code=404)

    async def eventgrid(self, request: Request) -> Response:
        """One HTTP request span for the delivery; each event's invocation is its child."""
        span = self.tracing.http_span(
            request.method, str(request.url), request.headers, host_header=request.headers.get("host", "")
        )
        status = 500
        try:
            response = await self._eventgrid(request, span)
            status = response.status_code
            return response
        finally:
            self.tracing.finish(span, status_code=status)

    async def _eventgrid(self, request: Request, span: InvocationSpan | None) -> Response:
        name = request.query_params.get("functionName", "")
        info = self.by_name.get(name)
        supplied = request.query_params.get("code") or request.headers.get("x-functions-key") or ""
        if not _key_matches(supplied, [self.keys.eventgrid, self.keys.host, self.keys.master]):
            return Response(status_code=401)
        if info is None or info.disabled or info.trigger_type != "eventGridTrigger":
            return JSONResponse({"error": f"no Event Grid function named {name!r}"}, status_code=404)
        if span is not None:
            span.attributes = self.tracing.attributes(info.name)
        try:
            events = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        events = events if isinstance(events, list) else [events]
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            data = (events[0] or {}).get("data") or {}
            return JSONResponse({"validationResponse": data.get("validationCode")})
        for event in events:
            try:
                await self.invoke(info, protos.TypedData(json=json.dumps(event)), "EventGrid trigger fired", span=span)
            except InvocationFailed:
                return Response(status_code=500)  # Event Grid retries
        return Response(status_code=202)

    def asgi(self) -> ASGIApp:
        async def functions(_: Request) -> Response:
            return JSONResponse([f.describe() for f in self.functions])

        async def worker(_: Request) -> Response:
            current = self.channel.current
            return JSONResponse(
                {
                    "pid": current.process.pid if current else None,
                    "pids": [worker.process.pid for worker in self.channel.processes],
                    "restarts": self.channel.restarts,
                    "host_pid": os.getpid(),
                    "capabilities": dict(current.capabilities) if current else {},
                    "open_telemetry": current.open_telemetry if current else False,
                    "telemetry_mode": self.tracing.mode,
                }
            )

        app = Starlette(
            routes=[
                Route("/admin/functions/{name}", self.admin_run, methods=["POST"]),
                Route("/admin", self.admin_other, methods=ADMIN_METHODS),
                Route("/admin/{path:path}", self.admin_other, methods=ADMIN_METHODS),
                Route("/runtime/webhooks/eventgrid", self.eventgrid, methods=["POST"]),
                Route("/_devstack/functions", functions, methods=["GET"]),
                Route("/_devstack/worker", worker, methods=["GET"]),
            ]
        )

        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            """``/api/`` is matched here against the functions' own routes, on the whole decoded path:
            Starlette's path patterns stop at a newline, and their ``$`` matches before a final one (so
            ``/admin/functions/nightly%0A`` would run ``nightly``). Any other path with a control
            character names nothing: 404."""
            if scope["type"] == "http":
                path: str = scope["path"]
                if path.startswith(API_PREFIX):
                    response = await self.http(Request(scope, receive), path[len(API_PREFIX) :])
                    await response(scope, receive, send)
                    return
                if CONTROL_CHARACTER.search(path):
                    await Response(status_code=404)(scope, receive, send)
                    return
            await app(scope, receive, send)

        return front

    # -- timers and queues ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for info in self.enabled:
            if info.trigger_type == "timerTrigger":
                self._tasks.append(asyncio.create_task(self._timer(info)))
            elif info.trigger_type == "queueTrigger":
                thread = threading.Thread(
                    target=self._queue_listener, args=(info,), daemon=True, name=f"queue-{info.name}"
                )
                thread.start()
                self._threads.append(thread)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.stop()
        for thread in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
        await asyncio.get_running_loop().run_in_executor(None, self.tracing.stop)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _timer(self, info: FunctionInfo) -> None:
        from croniter import croniter

        assert info.resolved_schedule is not None
        schedule = croniter(info.resolved_schedule, datetime.now(UTC), second_at_beginning=True)
        last: datetime | None = None
        if info.run_on_startup:
            await self._fire_timer(info, past_due=False, last=None, next_at=schedule.get_current(datetime))
        while not self._stop.is_set():
            next_at: datetime = schedule.get_next(datetime)
            delay = (next_at - datetime.now(UTC)).total_seconds()
            past_due = delay < -1  # the host was busy past the scheduled time
            await asyncio.sleep(max(0.0, delay))
            await self._fire_timer(info, past_due=past_due, last=last, next_at=next_at)
            last = next_at

    async def _fire_timer(
        self, info: FunctionInfo, *, past_due: bool, last: datetime | None, next_at: datetime | None
    ) -> None:
        with contextlib.suppress(InvocationFailed):
            await self.invoke(info, _timer_data(past_due=past_due, last=last, next_at=next_at), "Timer fired")

    def _queue_listener(self, info: FunctionInfo) -> None:
        """Poll like the host: back off to maxPollingInterval when empty, process batches, poison after max dequeues."""
        assert info.queue_name is not None
        assert self.loop is not None
        settings = self.queue_settings
        batch_size = int(settings["batchSize"])
        threshold = int(settings["newBatchThreshold"])
        max_interval = timespan_seconds(str(settings["maxPollingInterval"]))
        visibility = int(timespan_seconds(str(settings["visibilityTimeout"])))
        max_dequeue = int(settings["maxDequeueCount"])
        lease_s = int(os.environ.get(QUEUE_LEASE_SETTING) or QUEUE_LEASE_S)
        connection = info.connection or "AzureWebJobsStorage"
        client = self.queue_client(info.queue_name, connection)
        poison = self.queue_client(f"{info.queue_name}-poison", connection)
        interval = MIN_POLLING_INTERVAL_S
        in_flight: set[Any] = set()
        while not self._stop.is_set():
            if len(in_flight) > threshold:
                time.sleep(0.02)
                in_flight = {f for f in in_flight if not f.done()}
                continue
            try:
                messages = list(
                    client.receive_messages(
                        messages_per_page=batch_size, max_messages=batch_size, visibility_timeout=lease_s
                    )
                )
            except Exception:
                messages = []
            if not messages:
                self._stop.wait(interval)
                interval = min(max_interval, interval * 2)
                continue
            interval = MIN_POLLING_INTERVAL_S
            for message in messages:
                future = asyncio.run_coroutine_threadsafe(
                    self._process_queue_message(info, client, poison, message, visibility, max_dequeue), self.loop
                )
                in_flight.add(future)
            in_flight = {f for f in in_flight if not f.done()}

    async def _process_queue_message(
        self, info: FunctionInfo, client: Any, poison: Any, message: Any, visibility: int, max_dequeue: int
    ) -> None:
        metadata = _queue_metadata(
            message.id,
            message.pop_receipt,
            message.dequeue_count,
            message.inserted_on,
            message.expires_on,
            message.next_visible_on,
        )
        loop = asyncio.get_running_loop()
        try:
            await self.invoke(
                info,
                protos.TypedData(string=str(message.content)),
                f"New queue message detected on '{info.queue_name}'.",
                metadata,
            )
            await loop.run_in_executor(self.pool, client.delete_message, message)
        except InvocationFailed:
            if message.dequeue_count >= max_dequeue:
                self.log(
                    f"Message has reached MaxDequeueCount of {max_dequeue}."
                    f" Moving message to queue '{info.queue_name}-poison'."
                )
                await loop.run_in_executor(self.pool, poison.send_message, str(message.content))
                await loop.run_in_executor(self.pool, client.delete_message, message)
            else:
                await loop.run_in_executor(
                    self.pool,
                    lambda: client.update_message(
                        message, pop_receipt=message.pop_receipt, visibility_timeout=visibility
                    ),
                )


def _joined(items: Any) -> dict[str, str]:
    """A repeated header or query parameter arrives as one value joined with commas, as the host sends it."""
    joined: dict[str, str] = {}
    for key, value in items:
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def _typed_bytes(data: Any) -> bytes:
    kind = data.WhichOneof("data")
    if kind == "bytes":
        return bytes(data.bytes)
    if kind == "stream":
        return bytes(data.stream)
    if kind in ("string", "json", "int", "double"):
        return str(getattr(data, kind)).encode()
    return b""


def _http_response(value: Any) -> Response:
    """The worker's ``$return``: an ``RpcHttp`` (status code as a string), a plain string, or nothing."""
    kind = value.WhichOneof("data")
    if kind == "http":
        http = value.http
        return Response(_typed_bytes(http.body), status_code=int(http.status_code or 200), headers=dict(http.headers))
    if kind is None:
        return Response(status_code=204)
    return Response(_typed_bytes(value), media_type="text/plain")


def _queue_messages(data: Any) -> list[str]:
    """A queue output's value as messages: a string, bytes, a JSON list (one message per item), a
    collection of strings."""
    kind = data.WhichOneof("data")
    if kind == "string":
        return [data.string]
    if kind == "bytes":
        return [bytes(data.bytes).decode()]
    if kind == "collection_string":
        return list(data.collection_string.string)
    if kind == "collection_bytes":
        return [bytes(b).decode() for b in data.collection_bytes.bytes]
    if kind == "json":
        value = json.loads(data.json)
        items = value if isinstance(value, list) else [value]
        return [
            item
            if isinstance(item, str)
            else str(item["body"])
            if isinstance(item, dict) and "body" in item
            else json.dumps(item)
            for item in items
        ]
    return []


def _timer_data(*, past_due: bool, last: datetime | None, next_at: datetime | None) -> Any:
    status = {
        "Last": last.isoformat() if last else None,
        "Next": next_at.isoformat() if next_at else None,
        "LastUpdated": datetime.now(UTC).isoformat(),
    }
    return protos.TypedData(
        json=json.dumps({"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due})
    )


def _queue_metadata(
    message_id: str,
    pop_receipt: str,
    dequeue_count: int,
    inserted: datetime | None,
    expires: datetime | None,
    next_visible: datetime | None,
) -> dict[str, Any]:
    metadata = {
        "Id": protos.TypedData(string=message_id),
        "PopReceipt": protos.TypedData(string=pop_receipt),
        "DequeueCount": protos.TypedData(json=str(dequeue_count)),
    }
    for name, when in (("InsertionTime", inserted), ("ExpirationTime", expires), ("NextVisibleTime", next_visible)):
        if when is not None:
            metadata[name] = protos.TypedData(string=when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    return metadata


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def describe_banner(host: LocalHost) -> list[str]:
    """The banner's function list: name, trigger, route or schedule, key, and a curl example."""
    lines = ["Functions:", ""]
    for info in host.functions:
        if info.disabled:
            lines.append(f"  {info.name}: DISABLED: {info.disabled}")
        elif info.trigger_type == "httpTrigger":
            url = f"{host.base_url}/api/{info.route}"
            lines.append(f"  {info.name}: [{','.join(info.methods)}] {url}  (auth: {info.auth_level})")
            if info.auth_level != "anonymous":
                lines.append(f"      curl -H 'x-functions-key: {host.keys.functions[info.name]}' {url}")
            else:
                lines.append(f"      curl {url}")
        elif info.trigger_type == "timerTrigger":
            shown = (
                info.schedule
                if info.schedule == info.resolved_schedule
                else f"{info.schedule} = {info.resolved_schedule}"
            )
            lines.append(
                f"  {info.name}: timerTrigger '{shown}'" + (" (run on startup)" if info.run_on_startup else "")
            )
        elif info.trigger_type == "queueTrigger":
            lines.append(f"  {info.name}: queueTrigger on '{info.queue_name}'")
        else:
            lines.append(f"  {info.name}: {info.trigger_type}")
    return lines
