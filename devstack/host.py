"""A local Functions host (DESIGN §6): what Core Tools' ``func start`` does, for the Python v2 model.

* **Indexing** as the Python worker does it: import ``function_app`` (``PYTHON_SCRIPT_FILE_NAME``) from
  the app directory, find exactly one ``FunctionRegister``, call ``get_functions()`` once, and check that
  each function's parameters match its binding names.
* **HTTP** at ``/api/<route>`` with route templates (``{id}``, ``{id:int}``, ``{name:alpha}``, ``{x?}``),
  methods and auth levels; keys live in ``<state>/host-keys.json``; ``x-functions-key`` or ``?code=``.
* **Timers** on six-field NCRONTAB schedules (croniter, seconds first), ``run_on_startup``.
* **Queues** on Azurite honouring ``host.json`` (batch size, new-batch threshold, polling interval,
  visibility timeout, max dequeue count → ``<queue>-poison``), base64 messages; queue outputs.
* **Event Grid** at ``POST /runtime/webhooks/eventgrid?functionName=<name>`` (with the validation
  handshake), and ``POST /admin/functions/<name>`` (master key only, as every ``/admin/`` API) to run any
  non-HTTP function now.
* One log line per invocation start and end, in Core Tools' words; ``functionTimeout`` enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage  # the worker's concrete message, with dequeue_count
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

logger = logging.getLogger("devstack.host")

SCRIPT_NAME = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_\-]*\.py$")
DEFAULT_FUNCTION_TIMEOUT_S = 1800  # Flex Consumption's default when host.json says nothing
QUEUE_DEFAULTS = {
    "batchSize": 16,
    "newBatchThreshold": 8,
    "maxPollingInterval": "00:01:00",
    "visibilityTimeout": "00:00:00",
    "maxDequeueCount": 5,
}
MIN_POLLING_INTERVAL_S = 0.1  # the host starts polling fast and backs off to maxPollingInterval
THREAD_POOL_WORKERS = 8
ADMIN_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ROUTE_CONSTRAINTS = {"int": r"-?\d+", "alpha": r"[A-Za-z]+", "guid": r"[0-9a-fA-F-]{36}", "bool": r"true|false"}


class FunctionLoadError(RuntimeError):
    """The app cannot be indexed the way the Python worker would."""


def timespan_seconds(value: str) -> float:
    """``hh:mm:ss`` (or ``d.hh:mm:ss``) as host.json writes durations."""
    days = 0
    if "." in value.split(":")[0]:
        day_text, value = value.split(".", 1)
        days = int(day_text)
    hours, minutes, seconds = (float(p) for p in value.split(":"))
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


@dataclass
class FunctionInfo:
    name: str
    trigger_type: str
    trigger: Any
    user_function: Callable[..., Any]
    bindings: list[Any]
    auth_level: str | None = None
    route: str | None = None
    methods: list[str] = field(default_factory=list)
    schedule: str | None = None  # as declared, e.g. "%SYNC_SCHEDULE_ACCOUNTS%"
    resolved_schedule: str | None = None  # after app-setting resolution: what the timer runs on
    run_on_startup: bool = False
    queue_name: str | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

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
        }


def index_app(app_dir: Path, script: str = "function_app.py") -> list[FunctionInfo]:
    """Index the app as the worker does; raise FunctionLoadError with the worker's reasons."""
    if not SCRIPT_NAME.match(script):
        raise FunctionLoadError(f"PYTHON_SCRIPT_FILE_NAME {script!r} is not a valid script name")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module = importlib.import_module(Path(script).stem)
    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(apps) > 1:
        raise FunctionLoadError(
            "More than one FunctionApp/AsgiFunctionApp/WsgiFunctionApp top level function app instances are defined."
        )
    if not apps:
        raise FunctionLoadError("Could not find top level function app instances in function_app.py.")
    functions = []
    for fn in apps[0].get_functions():  # once: a second call raises in azure-functions
        trigger: Any = fn.get_trigger()
        user_function = fn.get_user_function()
        info = FunctionInfo(
            name=str(fn.get_function_name()),
            trigger_type=trigger.get_binding_name(),
            trigger=trigger,
            user_function=user_function,
            bindings=list(fn.get_bindings()),
        )
        if info.trigger_type == "httpTrigger":
            level = getattr(trigger, "auth_level", None)
            info.auth_level = (getattr(level, "value", None) or str(level or "function")).lower()
            info.route = trigger.route or info.name
            info.methods = [getattr(m, "value", str(m)).upper() for m in (trigger.methods or [])] or ["GET", "POST"]
        elif info.trigger_type == "timerTrigger":
            info.schedule = trigger.schedule
            info.resolved_schedule = _app_setting(trigger.schedule)
            info.run_on_startup = bool(getattr(trigger, "run_on_startup", False))
        elif info.trigger_type == "queueTrigger":
            info.queue_name = trigger.queue_name
        _check_parameters(info)
        functions.append(info)
    return functions


HOST_OVERRIDE_PREFIX = "AzureFunctionsJobHost__"


def _apply_host_overrides(host_json: dict[str, Any]) -> None:
    """App settings ``AzureFunctionsJobHost__a__b=value`` override host.json's ``a.b``, as the host does."""
    import os

    for name, value in os.environ.items():
        if not name.startswith(HOST_OVERRIDE_PREFIX):
            continue
        *parents, leaf = name[len(HOST_OVERRIDE_PREFIX) :].split("__")
        node = host_json
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = int(value) if value.isdigit() else value


def _app_setting(value: str) -> str:
    """``%NAME%`` is resolved from the app settings, as the host does for binding expressions."""
    import os

    match = re.fullmatch(r"%([^%]+)%", value.strip())
    if not match:
        return value
    resolved = os.environ.get(match.group(1))
    if resolved is None:
        raise FunctionLoadError(f"the app setting {match.group(1)!r} used by a binding expression is not set")
    return resolved


def _check_parameters(info: FunctionInfo) -> None:
    params = set(inspect.signature(info.user_function).parameters) - {"context"}
    names = {b.name for b in info.bindings if b.name != "$return"}
    if params - names:
        raise FunctionLoadError(
            f"cannot load the {info.name} function: the following parameters are declared in Python but not in the"
            f" bindings: {sorted(params - names)}"
        )
    if names - params:
        raise FunctionLoadError(
            f"cannot load the {info.name} function: the following parameters are declared in the bindings but not in"
            f" Python: {sorted(names - params)}"
        )


class _Out(func.Out[Any]):
    """The concrete ``func.Out`` the worker passes for output bindings."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


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
    return re.compile(f"^{pattern}/?$", re.I), names


class LocalHost:
    """Serves one indexed app; ``start()`` begins timers and queue listeners; the ASGI app serves HTTP."""

    def __init__(
        self, app_dir: Path, state_dir: Path, *, storage: str | None, base_url: str = "http://127.0.0.1:7071"
    ) -> None:
        self.app_dir = app_dir
        self.base_url = base_url
        host_json = json.loads((app_dir / "host.json").read_text()) if (app_dir / "host.json").exists() else {}
        _apply_host_overrides(host_json)
        self.function_timeout_s = (
            timespan_seconds(host_json["functionTimeout"])
            if host_json.get("functionTimeout")
            else DEFAULT_FUNCTION_TIMEOUT_S
        )
        self.queue_settings = {**QUEUE_DEFAULTS, **((host_json.get("extensions") or {}).get("queues") or {})}
        self.functions = index_app(app_dir)
        self.by_name = {f.name: f for f in self.functions}
        self.keys = HostKeys.load_or_create(state_dir / "host-keys.json", [f.name for f in self.functions])
        self.storage = storage
        self.pool = ThreadPoolExecutor(max_workers=THREAD_POOL_WORKERS, thread_name_prefix="fn")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: list[threading.Thread] = []
        # Literal routes win over templates, as in the real host: webhooks/dataverse before webhooks/{source}.
        http = [(f, *_compile_route(f.route or f.name)) for f in self.functions if f.trigger_type == "httpTrigger"]
        self.routes = sorted(http, key=lambda entry: len(entry[2]))

    # -- invocation ------------------------------------------------------------------------------
    async def invoke(self, info: FunctionInfo, args: dict[str, Any], reason: str) -> Any:
        invocation_id = str(uuid.uuid4())
        log_line(f"Executing 'Functions.{info.name}' (Reason='{reason}', Id={invocation_id})")
        started = time.monotonic()
        outcome = "Succeeded"
        try:
            if info.is_async:
                result = await asyncio.wait_for(info.user_function(**args), timeout=self.function_timeout_s)
            else:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self.pool, lambda: info.user_function(**args))
                result = await asyncio.wait_for(future, timeout=self.function_timeout_s)
            return result
        except TimeoutError:
            outcome = "Failed"
            log_line(
                f"Timeout value of {timedelta(seconds=self.function_timeout_s)} exceeded by function"
                f" 'Functions.{info.name}' (Id: '{invocation_id}'). Initiating cancellation."
            )
            raise
        except Exception as exc:
            outcome = "Failed"
            log_line(f"Executed 'Functions.{info.name}' (Failed, Id={invocation_id}, Duration={_ms(started)}ms)")
            log_line(f"System.Exception: Result: Failure Exception: {type(exc).__name__}: {exc}")
            raise
        finally:
            if outcome == "Succeeded":
                log_line(f"Executed 'Functions.{info.name}' (Succeeded, Id={invocation_id}, Duration={_ms(started)}ms)")

    def _outputs(self, info: FunctionInfo) -> dict[str, _Out]:
        return {b.name: _Out() for b in info.bindings if b.direction == 1 and b.name != "$return"}

    def _flush_outputs(self, info: FunctionInfo, outputs: dict[str, _Out]) -> None:
        for binding in info.bindings:
            if binding.name in outputs and binding.type == "queue":
                value = outputs[binding.name].get()
                if value is not None:
                    for message in value if isinstance(value, list) else [value]:
                        self.send_queue_message(binding.queue_name, message)

    # -- storage -----------------------------------------------------------------------------------
    def queue_client(self, name: str) -> Any:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        if not self.storage:
            raise RuntimeError("AzureWebJobsStorage is not set: queue bindings need Azurite")
        client = QueueClient.from_connection_string(
            self.storage,
            name,
            message_encode_policy=TextBase64EncodePolicy(),  # the host's queue trigger expects base64
            message_decode_policy=TextBase64DecodePolicy(),
        )
        with contextlib.suppress(Exception):
            client.create_queue()
        return client

    def send_queue_message(self, queue: str, message: Any) -> None:
        text = (
            message
            if isinstance(message, str)
            else json.dumps(message)
            if not isinstance(message, bytes)
            else message.decode()
        )
        self.queue_client(queue).send_message(text)

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

    async def http(self, request: Request) -> Response:
        path = request.path_params["path"]
        for info, pattern, _ in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if request.method not in info.methods:
                continue
            if not self._authorized(request, info, info.auth_level or "function"):
                return Response(status_code=401)
            trigger_name = info.trigger.name
            body = await request.body()
            req = func.HttpRequest(
                request.method,
                str(request.url),
                headers=dict(request.headers),
                params=dict(request.query_params),
                route_params={k: v for k, v in match.groupdict().items() if v is not None},
                body=body,
            )
            outputs = self._outputs(info)
            try:
                result = await self.invoke(
                    info, {trigger_name: req, **outputs}, "This function was programmatically called via the host APIs."
                )
            except Exception:
                return Response(status_code=500)
            await asyncio.get_running_loop().run_in_executor(self.pool, self._flush_outputs, info, outputs)
            return _to_response(result)
        return Response(status_code=404)

    async def admin_run(self, request: Request) -> Response:
        name = request.path_params["name"]
        info = self.by_name.get(name)
        if not self._authorized(request, None, "admin"):  # Azure: APIs under /admin/ take the master key only
            return Response(status_code=401)
        if info is None:
            return Response(status_code=404)
        if info.trigger_type == "httpTrigger":
            return JSONResponse({"error": "use the function's route to call an HTTP function"}, status_code=400)
        try:
            payload = (await request.json()) or {}
        except ValueError:
            payload = {}
        asyncio.get_running_loop().create_task(self._run_admin(info, payload.get("input")))
        return Response(status_code=202)

    async def _run_admin(self, info: FunctionInfo, value: Any) -> None:
        trigger = info.trigger.name
        outputs = self._outputs(info)
        args: dict[str, Any] = {**outputs}
        if info.trigger_type == "timerTrigger":
            args[trigger] = _timer_request(past_due=False, last=None, next_at=None)
        elif info.trigger_type == "queueTrigger":
            args[trigger] = QueueMessage(  # type: ignore[no-untyped-call]
                id=str(uuid.uuid4()), body=(value or "").encode(), dequeue_count=1
            )
        elif info.trigger_type == "eventGridTrigger":
            args[trigger] = _event_grid_event(json.loads(value) if isinstance(value, str) and value else value or {})
        else:
            args[trigger] = value
        with contextlib.suppress(Exception):
            await self.invoke(info, args, "This function was programmatically called via the host APIs.")
            await asyncio.get_running_loop().run_in_executor(self.pool, self._flush_outputs, info, outputs)

    async def admin_other(self, request: Request) -> Response:
        """The rest of ``/admin/`` (host status, keys, ...) is not emulated; it is still closed to any key
        but the master key, so no route under it is open by accident."""
        if not self._authorized(request, None, "admin"):
            return Response(status_code=401)
        return Response(status_code=404)

    async def eventgrid(self, request: Request) -> Response:
        name = request.query_params.get("functionName", "")
        info = self.by_name.get(name)
        supplied = request.query_params.get("code") or request.headers.get("x-functions-key") or ""
        if not _key_matches(supplied, [self.keys.eventgrid, self.keys.host, self.keys.master]):
            return Response(status_code=401)
        if info is None or info.trigger_type != "eventGridTrigger":
            return JSONResponse({"error": f"no Event Grid function named {name!r}"}, status_code=404)
        try:
            events = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        events = events if isinstance(events, list) else [events]
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            data = (events[0] or {}).get("data") or {}
            return JSONResponse({"validationResponse": data.get("validationCode")})
        for event in events:
            outputs = self._outputs(info)
            try:
                await self.invoke(
                    info, {info.trigger.name: _event_grid_event(event), **outputs}, "EventGrid trigger fired"
                )
            except Exception:
                return Response(status_code=500)  # Event Grid retries
            await asyncio.get_running_loop().run_in_executor(self.pool, self._flush_outputs, info, outputs)
        return Response(status_code=202)

    def asgi(self) -> Starlette:
        async def functions(_: Request) -> Response:
            return JSONResponse([f.describe() for f in self.functions])

        return Starlette(
            routes=[
                Route(
                    "/api/{path:path}", self.http, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                ),
                Route("/admin/functions/{name}", self.admin_run, methods=["POST"]),
                Route("/admin", self.admin_other, methods=ADMIN_METHODS),
                Route("/admin/{path:path}", self.admin_other, methods=ADMIN_METHODS),
                Route("/runtime/webhooks/eventgrid", self.eventgrid, methods=["POST"]),
                Route("/_devstack/functions", functions, methods=["GET"]),
            ]
        )

    # -- timers and queues ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for info in self.functions:
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
        for thread in self._threads:
            thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _timer(self, info: FunctionInfo) -> None:
        from croniter import croniter  # type: ignore[import-untyped]

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
        outputs = self._outputs(info)
        with contextlib.suppress(Exception):
            await self.invoke(
                info,
                {info.trigger.name: _timer_request(past_due=past_due, last=last, next_at=next_at), **outputs},
                "Timer fired",
            )
            await asyncio.get_running_loop().run_in_executor(self.pool, self._flush_outputs, info, outputs)

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
        client = self.queue_client(info.queue_name)
        poison = self.queue_client(f"{info.queue_name}-poison")
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
                        messages_per_page=batch_size, max_messages=batch_size, visibility_timeout=600
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
        msg = QueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=str(message.content).encode(),
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        outputs = self._outputs(info)
        loop = asyncio.get_running_loop()
        try:
            await self.invoke(
                info, {info.trigger.name: msg, **outputs}, f"New queue message detected on '{info.queue_name}'."
            )
            await loop.run_in_executor(self.pool, self._flush_outputs, info, outputs)
            await loop.run_in_executor(self.pool, client.delete_message, message)
        except Exception:
            if message.dequeue_count >= max_dequeue:
                log_line(
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


def _key_matches(supplied: str, allowed: list[str]) -> bool:
    """Every key is compared (no early exit), each in constant time, so the answer's timing says nothing;
    as bytes, because ``compare_digest`` refuses a str with non-ASCII characters (a header can carry them)."""
    matches = [secrets.compare_digest(supplied.encode(), key.encode()) for key in allowed]
    return any(matches)


def _timer_request(*, past_due: bool, last: datetime | None, next_at: datetime | None) -> Any:
    from azure.functions.timer import TimerRequest

    now = datetime.now(UTC).isoformat()
    status = {
        "Last": last.isoformat() if last else None,
        "Next": next_at.isoformat() if next_at else None,
        "LastUpdated": now,
    }
    return TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": False})


def _event_grid_event(event: dict[str, Any]) -> func.EventGridEvent:
    when = event.get("eventTime")
    return func.EventGridEvent(
        id=str(event.get("id", "")),
        data=event.get("data") or {},
        topic=str(event.get("topic", "")),
        subject=str(event.get("subject", "")),
        event_type=str(event.get("eventType", "")),
        event_time=datetime.fromisoformat(when.replace("Z", "+00:00")) if isinstance(when, str) and when else None,
        data_version=str(event.get("dataVersion", "")),
    )


def _to_response(result: Any) -> Response:
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-type"}
        media = result.mimetype or "text/plain"
        if (result.charset and media.startswith("text/")) or (result.charset and "json" in media):
            media = f"{media}; charset={result.charset}"
        return Response(result.get_body(), status_code=result.status_code, headers=headers, media_type=media)
    if result is None:
        return Response(status_code=204)
    return Response(str(result).encode(), media_type="text/plain")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def log_line(text: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    print(f"[{stamp}] {text}", flush=True)


def describe_banner(host: LocalHost) -> list[str]:
    """The banner's function list: name, trigger, route or schedule, key, and a curl example."""
    lines = ["Functions:", ""]
    for info in host.functions:
        if info.trigger_type == "httpTrigger":
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
