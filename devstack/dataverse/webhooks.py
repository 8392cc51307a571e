"""Outgoing webhooks, as Dataverse sends them: service endpoints from the scenario or the
control API, notified asynchronously after commit with the RemoteExecutionContext JSON.

Modelled: an asynchronous PostOperation step (Mode 1, Stage 40) per registration and message; WebhookKey,
HttpHeader and HttpQueryString auth; the ``x-ms-dynamics-*`` headers; a 60 s timeout and exactly
one retry on 502/503/504; over 256 KB the context is stripped and ``x-ms-dynamics-msg-size-exceeded``
is set (its value is UNCONFIRMED: we send ``true``). Each delivery is a system job (``asyncoperation``,
``devstack.dataverse.system_jobs``): a 2xx answer completes it Succeeded; a refused connection, a timeout
or any other status completes it Failed, with the reason in ``message``.

Optionally (scenario ``dataverse.webhook_reorder`` or the control API's ``webhook_reorder``) deliveries are
gathered into windows and sent in a seeded shuffle, so a later change of a row can arrive before an earlier
one. Dataverse documents that its asynchronous service does not guarantee creation order
(https://learn.microsoft.com/power-apps/developer/data-platform/asynchronous-service); how often it
reorders is not published, so the window and the seed are the test's choice.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from devstack.dataverse.metadata import Table
from devstack.dataverse.store import ChangeEvent
from devstack.dataverse.system_jobs import (
    ASYNC_OPERATION,
    AUTH_TYPES,
    SDK_MESSAGE_PROCESSING_STEP,
    SERVICE_ENDPOINT,
    SystemCollection,
    SystemJob,
    SystemJobs,
    service_endpoint_rows,
    step_rows,
)
from devstack.stats import Stats

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
MAX_PAYLOAD_BYTES = 256 * 1024
RETRY_STATUSES = {502, 503, 504}
# Deliveries in flight at once. Dataverse's asynchronous service does not publish its parallelism
# (UNCONFIRMED): the scenario's `dataverse.webhook_concurrency` sets it.
DEFAULT_DELIVERY_CONCURRENCY = 16
STRIPPED_WHEN_TOO_LARGE = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")
# Dataverse waits this long for the endpoint's answer. Like every modelled time it is multiplied by the
# emulator's time scale; `dataverse.webhook_timeout_s` (or the control API's `webhook_timeout_s`) replaces it.
DATAVERSE_TIMEOUT_S = 60.0
# Unless a scenario or test set the timeout, the scaled one never drops below this: a local receiver does
# its work in real time, not model time, and a busy machine must not turn slow answers into failed jobs.
MIN_DEFAULT_TIMEOUT_S = 10.0
# The HTTP client refuses a timeout of zero (time scale 0 means "no modelled waits", not "no wait at all").
SMALLEST_TIMEOUT_S = 0.001
# A reorder window is sent when it holds `window` deliveries or this long (real seconds) after its first.
REORDER_MAX_WAIT_S = 1.0


@dataclass
class Registration:
    """A webhook ``serviceendpoint`` and its steps: one asynchronous post-operation step per message."""

    url: str
    table: str
    messages: list[str]
    auth_type: str = "WebhookKey"  # WebhookKey | HttpHeader | HttpQueryString
    auth_value: dict[str, str] | str = ""
    step_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # the first message's step
    endpoint_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = ""
    step_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.auth_type not in AUTH_TYPES:
            raise ValueError(f"webhook auth type {self.auth_type!r} is not one of {', '.join(AUTH_TYPES)}")
        if not self.name:
            parts = urlsplit(self.url)
            self.name = f"webhook {parts.netloc}{parts.path}"
        for index, message in enumerate(self.messages):
            # Derived from the first step's id, so a registration's step ids are stable for its lifetime.
            derived = self.step_id if index == 0 else str(uuid.uuid5(uuid.UUID(self.step_id), message))
            self.step_ids.setdefault(message, derived)

    def step_for(self, message: str) -> str:
        return self.step_ids[message]

    def step_name(self, message: str) -> str:
        # The Plug-in Registration Tool's default step name is "<handler>: <message> of <table>" (UNCONFIRMED
        # for webhook steps); a system job is named after its step (UNCONFIRMED).
        return f"{self.name}: {message} of {self.table}"

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Registration:
        auth = spec.get("auth") or {}
        kind = str(auth.get("type", "WebhookKey"))
        if kind not in AUTH_TYPES:
            raise ValueError(f"webhook auth type {kind!r} is not one of {', '.join(AUTH_TYPES)}")
        value: dict[str, str] | str = auth.get("value", "") if kind == "WebhookKey" else dict(auth.get("values") or {})
        return cls(
            str(spec["url"]),
            str(spec["table"]),
            list(spec.get("messages") or ["Create", "Update", "Delete"]),
            kind,
            value,
            name=str(spec.get("name") or ""),
        )


@dataclass
class OrgInfo:
    host: str
    organization_id: str
    business_unit_id: str
    name: str = "unqdevstack"


def _date(value: str) -> str:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return f"/Date({int(parsed.timestamp() * 1000)})/"


def _value(table: Table, name: str, value: Any) -> Any:
    attr = table.attributes.get(name)
    if value is None or attr is None:
        return value
    if attr.type == "lookup":
        return {
            "__type": f"EntityReference:{CONTRACTS}",
            "Id": value,
            "KeyAttributes": [],
            "LogicalName": attr.target,
            "Name": None,
            "RowVersion": None,
        }
    if attr.type == "picklist":
        return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}
    if attr.type == "money":
        return {"__type": f"Money:{CONTRACTS}", "Value": value}
    if attr.type == "datetime":
        return _date(str(value))
    return value


def _entity(
    table: Table, record_id: str, data: dict[str, Any], *, typed: bool, row_version: int | None
) -> dict[str, Any]:
    attributes = [{"key": k, "value": _value(table, k, v)} for k, v in data.items()]
    attributes.append({"key": table.primary_id, "value": record_id})
    entity: dict[str, Any] = {
        "Attributes": attributes,
        "EntityState": None,
        "FormattedValues": [],
        "Id": record_id,
        "KeyAttributes": [],
        "LogicalName": table.logical_name,
        "RelatedEntities": [],
        "RowVersion": str(row_version) if row_version is not None else None,
    }
    return {"__type": f"Entity:{CONTRACTS}", **entity} if typed else entity


def remote_execution_context(
    event: ChangeEvent, table: Table, reg: Registration, org: OrgInfo, user_id: str, correlation_id: str
) -> dict[str, Any]:
    record = event.record
    if event.message == "Delete":
        target: Any = {
            "__type": f"EntityReference:{CONTRACTS}",
            "Id": record.id,
            "KeyAttributes": [],
            "LogicalName": table.logical_name,
            "Name": None,
            "RowVersion": None,
        }
    else:
        changed = event.changes if event.message == "Update" else record.data
        target = _entity(table, record.id, changed, typed=True, row_version=None)
    post_images = []
    if event.message != "Delete":
        post_images.append(
            {
                "key": "AsynchronousStepPrimaryName",
                "value": _entity(table, record.id, record.data, typed=False, row_version=record.version),
            }
        )
    pre_images = []
    if event.before is not None:
        pre_images.append(
            {
                "key": "PreImage",
                "value": _entity(
                    table, event.before.id, event.before.data, typed=False, row_version=event.before.version
                ),
            }
        )
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return {
        "BusinessUnitId": org.business_unit_id,
        "CorrelationId": correlation_id,
        "Depth": 1,
        "InitiatingUserAgent": "",
        "InitiatingUserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "InitiatingUserId": user_id,
        "InputParameters": [{"key": "Target", "value": target}],
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": event.message,
        "Mode": 1,
        "OperationCreatedOn": f"/Date({now_ms}+0000)/",
        "OperationId": str(uuid.uuid4()),
        "OrganizationId": org.organization_id,
        "OrganizationName": org.name,
        "OutputParameters": [{"key": "id", "value": record.id}] if event.message == "Create" else [],
        "OwningExtension": {
            "Id": reg.step_for(event.message),
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": None,
            "RowVersion": None,
        },
        "ParentContext": None,
        "PostEntityImages": post_images,
        "PreEntityImages": pre_images,
        "PrimaryEntityId": record.id,
        "PrimaryEntityName": table.logical_name,
        "RequestId": str(uuid.uuid4()),
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "UserId": user_id,
    }


@dataclass(frozen=True)
class Reorder:
    """Out-of-order delivery: windows of up to ``window`` deliveries, each sent in a shuffle seeded by ``seed``."""

    window: int
    seed: int
    max_wait_s: float = REORDER_MAX_WAIT_S

    @classmethod
    def from_dict(cls, spec: Any) -> Reorder | None:
        """``{"window": N, "seed": S[, "max_wait_s": T]}``; ``None`` (or ``false``) switches reordering off."""
        if spec is None or spec is False:
            return None
        if not isinstance(spec, dict) or "window" not in spec:
            raise ValueError('webhook_reorder must be {"window": N, "seed": S} or null')
        window, seed = spec["window"], spec.get("seed", 0)
        max_wait_s = spec.get("max_wait_s", REORDER_MAX_WAIT_S)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError("webhook_reorder.window must be a whole number of deliveries, at least 1")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("webhook_reorder.seed must be an integer")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, int | float) or max_wait_s <= 0:
            raise ValueError("webhook_reorder.max_wait_s must be a positive number of seconds")
        return cls(window, seed, float(max_wait_s))


@dataclass(frozen=True)
class _Outcome:
    status: int  # the HTTP status; 0 when no answer came
    reason: str  # the HTTP reason phrase, or why no answer came ("timeout", "connection refused", ...)


@dataclass
class _Delivery:
    job: SystemJob
    reg: Registration
    table: Table
    context: dict[str, Any]
    timeout_s: float


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the exception's chain (requests wraps urllib3, which wraps the OS error)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return False


def _endpoint(url: str) -> str:
    """The URL without its query string: a WebhookKey or HttpQueryString secret must not reach a job's message."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _failure_text(endpoint: str, outcome: _Outcome, attempts: int, timeout_s: float) -> tuple[str, str]:
    """(message, friendlymessage) of a failed job. Dataverse's own wording is UNCONFIRMED: ours says what
    happened (the status, a refused connection or the timeout) and never carries the URL's query string."""
    retried = " after one retry" if attempts > 1 else ""
    if outcome.status:
        status = f"{outcome.status} {outcome.reason}".rstrip()
        return (
            f"Webhook request to {endpoint} failed{retried}: the endpoint answered HTTP {status}.",
            f"The webhook endpoint answered HTTP {outcome.status}.",
        )
    if outcome.reason == "timeout":
        return (
            f"Webhook request to {endpoint} failed{retried}: timeout, no response within {timeout_s:g} s.",
            "The webhook endpoint did not answer in time.",
        )
    return (
        f"Webhook request to {endpoint} failed{retried}: {outcome.reason}.",
        f"The webhook endpoint could not be reached ({outcome.reason}).",
    )


class WebhookDispatcher:
    """Turns committed changes into system jobs and delivers them: concurrently by default, or in seeded
    reorder windows. Every job's outcome is kept for ``GET asyncoperations``."""

    def __init__(
        self,
        registrations: list[Registration],
        org: OrgInfo,
        stats: Stats,
        *,
        timeout_s: float | None = None,
        concurrency: int = DEFAULT_DELIVERY_CONCURRENCY,
        reorder: Reorder | dict[str, Any] | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook-delivery")
        self.registrations = registrations
        self.org = org
        self.stats = stats
        self.timeout_s = timeout_s  # model seconds; None: Dataverse's own, floored (see delivery_timeout_s)
        self.jobs = SystemJobs()
        self._local = threading.local()
        self._tasks: set[asyncio.Task[None]] = set()  # held so the loop cannot drop a delivery in flight
        self._reorder: Reorder | None = None
        self._rng = random.Random(0)  # replaced by set_reorder: a reproducible shuffle, not a secret
        self._window: list[_Delivery] = []
        self._window_timer: asyncio.TimerHandle | None = None
        self._order_lock = asyncio.Lock()  # reorder windows go out one after another, in the order they closed
        self.set_reorder(reorder)

    # -- configuration -------------------------------------------------------------------------------------
    def set_reorder(self, spec: Reorder | dict[str, Any] | None) -> None:
        """Switch reordering on (a fresh generator from the seed, so the same seed gives the same order) or off.
        A window still gathering is sent first, under the setting it was gathered with."""
        reorder = spec if isinstance(spec, Reorder) or spec is None else Reorder.from_dict(spec)
        self._flush_window()
        self._reorder = reorder
        self._rng = random.Random(reorder.seed if reorder else 0)

    @property
    def reorder(self) -> Reorder | None:
        return self._reorder

    def delivery_timeout_s(self, time_scale: float) -> float:
        """Real seconds to wait for an answer at ``time_scale``."""
        if self.timeout_s is None:
            return max(DATAVERSE_TIMEOUT_S * time_scale, MIN_DEFAULT_TIMEOUT_S)
        return max(self.timeout_s * time_scale, SMALLEST_TIMEOUT_S)

    def collection(self, entity_set: str) -> SystemCollection | None:
        """The read-only collections behind the webhooks: system jobs, service endpoints, steps."""
        if entity_set == ASYNC_OPERATION.entity_set:
            return SystemCollection(ASYNC_OPERATION, self.jobs.rows, self.jobs.get)
        if entity_set == SERVICE_ENDPOINT.entity_set:
            return SystemCollection(SERVICE_ENDPOINT, lambda: service_endpoint_rows(self.registrations))
        if entity_set == SDK_MESSAGE_PROCESSING_STEP.entity_set:
            return SystemCollection(SDK_MESSAGE_PROCESSING_STEP, lambda: step_rows(self.registrations))
        return None

    # -- scheduling ------------------------------------------------------------------------------------------
    def schedule(
        self, events: list[ChangeEvent], tables: dict[str, Table], user_id: str, *, time_scale: float = 1.0
    ) -> None:
        """One system job per matching (event, step), created now (Ready, Waiting For Resources) and sent later."""
        timeout_s = self.delivery_timeout_s(time_scale)
        for event in events:
            table = tables.get(event.record.entity)
            if table is None:
                continue
            for reg in self.registrations:
                if reg.table == table.logical_name and event.message in reg.messages:
                    correlation_id = str(uuid.uuid4())
                    body = remote_execution_context(event, table, reg, self.org, user_id, correlation_id)
                    job = self.jobs.create(
                        name=reg.step_name(event.message),
                        step_id=reg.step_for(event.message),
                        table=table.logical_name,
                        record_id=event.record.id,
                        message=event.message,
                        correlation_id=correlation_id,
                        depth=int(body["Depth"]),
                    )
                    delivery = _Delivery(job, reg, table, body, timeout_s)
                    if self._reorder is None:
                        self._spawn(self._deliver(delivery))
                    else:
                        self._gather(delivery)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gather(self, delivery: _Delivery) -> None:
        assert self._reorder is not None
        self._window.append(delivery)
        if len(self._window) >= self._reorder.window:
            self._flush_window()
        elif self._window_timer is None:
            self._window_timer = asyncio.get_running_loop().call_later(self._reorder.max_wait_s, self._flush_window)

    def _flush_window(self) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        if not self._window:
            return
        window, self._window = self._window, []
        self._rng.shuffle(window)
        self._spawn(self._deliver_in_order(window))

    async def _deliver_in_order(self, window: list[_Delivery]) -> None:
        # One at a time, so the receiver sees exactly the shuffled order (parallel sends would race).
        async with self._order_lock:
            for delivery in window:
                await self._deliver(delivery)

    # -- delivery --------------------------------------------------------------------------------------------
    def _request(self, reg: Registration, table: Table, context: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        payload = json.dumps(context).replace("/", "\\/")  # Dataverse escapes slashes (valid JSON)
        headers = {
            "Content-Type": "application/json",
            "x-ms-dynamics-organization": self.org.host,
            "x-ms-dynamics-entity-name": table.logical_name,
            "x-ms-dynamics-request-name": str(context["MessageName"]).lower(),
            "x-ms-correlation-request-id": str(context["CorrelationId"]),
            "x-request-id": str(uuid.uuid4()),
        }
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            for key in STRIPPED_WHEN_TOO_LARGE:
                context.pop(key, None)
            payload = json.dumps(context).replace("/", "\\/")
            headers["x-ms-dynamics-msg-size-exceeded"] = "true"
        url = reg.url
        if reg.auth_type == "WebhookKey" and reg.auth_value:
            url += ("&" if urlsplit(url).query else "?") + urlencode({"code": reg.auth_value})
        elif reg.auth_type == "HttpQueryString" and isinstance(reg.auth_value, dict):
            url += ("&" if urlsplit(url).query else "?") + urlencode(reg.auth_value)
        elif reg.auth_type == "HttpHeader" and isinstance(reg.auth_value, dict):
            headers.update(reg.auth_value)
        return url, headers, payload.encode()

    async def _deliver(self, delivery: _Delivery) -> None:
        job = delivery.job
        try:
            url, headers, body = self._request(delivery.reg, delivery.table, delivery.context)
            self.jobs.start(job)
            loop = asyncio.get_running_loop()
            for attempt in (1, 2):
                outcome = await loop.run_in_executor(self._pool, self._post, url, headers, body, delivery.timeout_s)
                self.stats.bump("webhook deliveries attempted")
                self.stats.bump(f"webhook deliveries {outcome.status}")
                if 200 <= outcome.status < 300:
                    self.jobs.succeed(job)
                    self.stats.bump("webhook deliveries succeeded")
                    return
                if outcome.status in RETRY_STATUSES and attempt == 1:
                    self.jobs.retried(job)
                    self.stats.bump("webhook deliveries retried")
                    continue
                message, friendly = _failure_text(_endpoint(url), outcome, attempt, delivery.timeout_s)
                self.jobs.fail(job, message, friendly)
                self.stats.bump("webhook deliveries failed")
                return
        except Exception as exc:  # an emulator bug must still complete the job, not leave it In Progress
            self.jobs.fail(job, f"The emulator could not send the webhook: {type(exc).__name__}.", "Internal error.")
            self.stats.bump("webhook deliveries failed")

    def _post(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> _Outcome:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:  # one keep-alive connection per delivery thread: no TCP setup per event
            session = self._local.session = requests.Session()
        try:
            # Redirects are not followed: a 3xx is a non-2xx answer, so the job fails (UNCONFIRMED for Dataverse).
            response = session.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
        except requests.Timeout:
            return _Outcome(0, "timeout")
        except requests.ConnectionError as exc:
            return _Outcome(0, "connection refused" if _caused_by(exc, ConnectionRefusedError) else "connection failed")
        except requests.RequestException as exc:
            return _Outcome(0, type(exc).__name__)
        return _Outcome(response.status_code, response.reason or "")
