"""Application Insights ingestion (HTTPS, the connection string's ``IngestionEndpoint``): the track API that
``azure-monitor-opentelemetry-exporter`` (and the older Application Insights SDKs) post telemetry to.

Wire facts, and where they come from:

* ``POST {IngestionEndpoint}/v2.1/track`` (the exporter's generated client: base URL ``{host}/{apiVersion}``,
  api version ``v2.1``, operation ``/track``; ``/v2/track`` for the older SDKs). The connection string's
  endpoint ends in ``/``, so the exporter really sends ``//v2.1/track``: repeated slashes are collapsed here.
* The body is a JSON array of envelopes (the exporter: ``json.dumps`` of ``TelemetryItem``s, ``Content-Type:
  application/json``, not compressed). ``Content-Encoding: gzip``/``deflate`` and ``application/x-json-stream``
  (one envelope per line, the older SDKs' channel) are accepted too (UNCONFIRMED that Breeze takes both on v2.1).
* An envelope (Azure REST API specs, ``applicationinsights/data-plane/Exporters/models.tsp``): ``name`` and
  ``time`` required, ``iKey``, ``tags`` (``ai.operation.id``, ``ai.operation.parentId``, ...), ``data.baseType``
  and ``data.baseData`` with each domain's required fields (``REQUIRED_FIELDS`` below). The exporter writes
  ``baseType`` ``MetricData`` (whose baseData the spec calls MetricsData), ``RequestData``,
  ``RemoteDependencyData``, ``MessageData``, ``ExceptionData``, ``EventData``, ``AvailabilityData``.
* The answer is a TrackResponse ``{"itemsReceived", "itemsAccepted", "errors": [{"index", "statusCode",
  "message"}]}``: 200 when every item was accepted, 206 with one error per refused item. When nothing was
  accepted and every error is a 400, the answer is 400 with the same body (public issue threads quote
  ``400 Invalid instrumentation key`` with ``{"itemsReceived":1,"itemsAccepted":0,"errors":[{"index":0,
  "statusCode":400,"message":"Invalid instrumentation key"}]}``; a missing field reads ``109: Field 'time' on
  type 'Envelope' is required but missing or empty. Expected: string, Actual: undefined``).
* What the exporter does with each answer (its ``export/_base.py`` and ``_constants.py``, 1.0.0b58): 200 done;
  206: items whose error status is 401, 403, 408, 429, 500, 502, 503 or 504 are retried (put in its offline
  storage, sent again after a later successful export), the others dropped; a whole-request 401, 403, 408, 429
  or 5xx is retryable (offline storage), 400/404 and others are dropped, 402/439 are quota. Before that,
  azure-core's retry policy retries a POST answered 500/503/504 (three times, 0 s / 1.6 s / 3.2 s back-off),
  and any status that carries ``Retry-After`` after waiting for it.
* Entra authentication (Microsoft's "Microsoft Entra authentication for Application Insights"): the token
  audience is ``https://monitor.azure.com`` (the exporter asks for the scope ``https://monitor.azure.com//.default``);
  with local authentication disabled (``DisableLocalAuth: true``, as ``infra/modules/monitoring.bicep`` sets it)
  telemetry without a token is refused; the identity needs the Monitoring Metrics Publisher role on the resource.

UNCONFIRMED, and chosen as written (each configurable where it matters):

* the refusals' status and body: no or invalid token 401, a devstack token for another audience 403
  (``application_insights.wrong_audience_status``), an identity that is not a publisher 403; each in the
  TrackResponse shape, every item carrying the status and the messages in ``_AUTH_MESSAGES``; no
  ``WWW-Authenticate`` header;
* a token presented while local authentication is enabled is still checked (a public issue says the service
  then answers 403 without the publisher role);
* an unparsable body is 400 with one error at index 0; an empty array is 200 with zero items;
* an envelope without ``iKey`` is refused like a wrong one; a ``time`` that is not ISO 8601 is refused with a
  ``109``-style message; unknown ``baseType``s are accepted unchecked;
* the request body limit (``application_insights.max_body_bytes``, 64 MiB: 413 above it);
* the answers to the injected faults: 429 and 503 carry ``Retry-After`` when ``retry_after_s`` is given.

Live Metrics (QuickPulse, the connection string's ``LiveEndpoint``) is not emulated: the endpoint points here
and anything but the track routes answers 404. The exporters alone never call it; the distro must be
configured with ``enable_live_metrics=False``.

Test surface: ``GET /_devstack/telemetry`` (filters ``type`` = baseType, ``name`` = a metric's or an item's
name, ``operation_id``, ``parent_id``, ``id`` = baseData.id, ``limit``), ``DELETE /_devstack/telemetry``,
``POST /_devstack/control`` (``fail``, ``partial``, ``local_auth_disabled``, ``publishers``, ``max_items``),
``/_devstack/stats`` and ``/_devstack/outage`` as every devstack server has them.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.common import bearer_token, stats_routes
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer
from devstack.world import ScenarioError, World

MONITOR_RESOURCE = "https://monitor.azure.com"  # the public cloud's token audience for ingestion
TRACK_PATHS = ("/v2.1/track", "/v2/track")
DEFAULT_MAX_ITEMS = 100_000  # envelopes kept for tests; the oldest are dropped (and counted) beyond it
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # UNCONFIRMED: Breeze's request size limit
INVALID_IKEY = "Invalid instrumentation key"

# Required fields of each domain (the Exporters TypeSpec), with the JSON type the message names. ``ver`` has a
# default (2) and is not required of the sender.
REQUIRED_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "MetricData": (("metrics", "array"),),
    "RequestData": (("id", "string"), ("duration", "string"), ("success", "boolean"), ("responseCode", "string")),
    "RemoteDependencyData": (("name", "string"), ("duration", "string")),
    "MessageData": (("message", "string"),),
    "ExceptionData": (("exceptions", "array"),),
    "EventData": (("name", "string"),),
    "AvailabilityData": (("id", "string"), ("name", "string"), ("duration", "string"), ("success", "boolean")),
    "PageViewData": (("id", "string"), ("name", "string")),
}
DOMAIN_TYPE_NAMES = {"MetricData": "MetricsData"}  # the spec's model name where the baseType differs
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "double": (int, float),
}
_AUTH_MESSAGES = {  # UNCONFIRMED wording
    "missing": "Authentication is required: local authentication is disabled for this resource, send an Entra"
    " ID bearer token for https://monitor.azure.com.",
    "malformed": "The Authorization header is not a bearer token.",
    "invalid": "The access token is invalid.",
    "expired": "The access token has expired.",
    "audience": "The access token's audience is not https://monitor.azure.com.",
    "role": "The identity does not have the Monitoring Metrics Publisher role on this resource.",
}


@dataclass
class Fault:
    """The next ``count`` track requests: ``kind`` "fail" answers the whole request with ``status``; "partial"
    refuses the items at ``indices`` (negative: from the end) with ``status`` and accepts the rest (206)."""

    kind: str
    count: int
    status: int
    retry_after_s: float | None = None
    indices: tuple[int, ...] = (0,)


@dataclass
class AppInsightsConfig:
    instrumentation_key: str
    local_auth_disabled: bool = True  # as the Bicep sets the resource (DisableLocalAuth: true)
    publishers: frozenset[str] | None = None  # object ids with Monitoring Metrics Publisher; None: any token
    max_items: int = DEFAULT_MAX_ITEMS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    wrong_audience_status: int = 403


class TelemetryStore:
    """Accepted envelopes, oldest first, at most ``max_items`` (the oldest dropped and counted)."""

    def __init__(self, max_items: int) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, Any]] = deque(maxlen=max_items)
        self.accepted = 0
        self.dropped = 0

    def resize(self, max_items: int) -> None:
        with self._lock:
            overflow = max(0, len(self._items) - max_items)
            self.dropped += overflow
            self._items = deque(list(self._items)[overflow:], maxlen=max_items)

    def add(self, envelopes: list[dict[str, Any]]) -> None:
        with self._lock:
            for envelope in envelopes:
                if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
                    self.dropped += 1
                self._items.append(envelope)
            self.accepted += len(envelopes)

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self.accepted = self.dropped = 0
            return count

    def query(self, filters: dict[str, str], limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            items = list(self._items)
        found = [e for e in items if _matches(e, filters)]
        return (found[-limit:] if limit else found), len(items)


@dataclass
class AppInsightsContext:
    world: World
    issuer: TokenIssuer
    stats: Stats
    config: AppInsightsConfig
    store: TelemetryStore = field(init=False)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.store = TelemetryStore(self.config.max_items)

    def connection_string(self, base_url: str) -> str:
        endpoint = base_url.rstrip("/") + "/"
        key = self.config.instrumentation_key
        return f"InstrumentationKey={key};IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"

    def take_fault(self) -> Fault | None:
        with self.lock:
            while self.faults and self.faults[0].count <= 0:
                self.faults.pop(0)
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.count -= 1
            return fault


def build_appinsights(
    scenario: dict[str, Any], world: World, issuer: TokenIssuer, stats: Stats, *, local_auth: str | None = None
) -> AppInsightsContext:
    """The scenario's ``application_insights:`` section (every key optional): ``instrumentation_key`` (default:
    a new GUID per start), ``local_auth_disabled`` (default true, as the Bicep), ``publishers`` (managed
    identity or application names holding Monitoring Metrics Publisher; default: any identity), ``max_items``,
    ``max_body_bytes``, ``wrong_audience_status``. ``local_auth`` ("enabled"/"disabled", the command line)
    overrides the scenario. Makes the managed-identity endpoint and Entra issue tokens for Azure Monitor."""
    spec = scenario.get("application_insights") or {}
    key = str(spec.get("instrumentation_key") or uuid.uuid4()).lower()
    try:
        uuid.UUID(key)
    except ValueError as exc:
        raise ScenarioError("application_insights.instrumentation_key: a GUID") from exc
    disabled = bool(spec.get("local_auth_disabled", True))
    if local_auth is not None:
        disabled = local_auth == "disabled"
    config = AppInsightsConfig(
        instrumentation_key=key,
        local_auth_disabled=disabled,
        publishers=_publishers(world, spec.get("publishers")),
        max_items=int(spec.get("max_items", DEFAULT_MAX_ITEMS)),
        max_body_bytes=int(spec.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        wrong_audience_status=int(spec.get("wrong_audience_status", 403)),
    )
    with world.lock:
        if MONITOR_RESOURCE not in (r.rstrip("/") for r in world.extra_resources):
            world.extra_resources.append(MONITOR_RESOURCE)
    return AppInsightsContext(world, issuer, stats, config)


def _publishers(world: World, names: Any) -> frozenset[str] | None:
    if names is None:
        return None
    ids = set()
    for name in names:
        identity = next((i for i in world.identities if i.name == name), None)
        app = world.applications.get(str(name))
        if identity is not None:
            ids.add(identity.object_id)
        elif app is not None:
            ids.add(app.object_id)
        else:
            raise ScenarioError(f"application_insights.publishers: unknown managed identity or application {name!r}")
    return frozenset(ids)


# -- the app ------------------------------------------------------------------------------------------


def appinsights_app(ctx: AppInsightsContext) -> Starlette:
    async def track(request: Request) -> Response:
        body = await request.body()
        if len(body) > ctx.config.max_body_bytes:
            return _track_response(413, 0, [(0, 413, "The request body is too large.")])
        items, parse_error = _parse(body, request.headers.get("content-encoding", ""))
        received = len(items) if items is not None else 0
        refusal = _authenticate(ctx, request)
        if refusal is not None:
            status, reason = refusal
            ctx.stats.bump(f"telemetry requests refused {status}")
            return _track_response(status, received, [(i, status, _AUTH_MESSAGES[reason]) for i in range(received)])
        if items is None:
            ctx.stats.bump("telemetry requests unparsable")
            return _track_response(400, 0, [(0, 400, parse_error)])
        fault = ctx.take_fault()
        if fault is not None and fault.kind == "fail":
            ctx.stats.bump(f"telemetry requests failed by control {fault.status}")
            headers = {"Retry-After": _seconds(fault.retry_after_s)} if fault.retry_after_s is not None else None
            message = f"devstack: answered {fault.status} by /_devstack/control"
            return _track_response(
                fault.status, received, [(i, fault.status, message) for i in range(received)], headers
            )
        errors: list[tuple[int, int, str]] = []
        accepted: list[dict[str, Any]] = []
        refused_by_fault = _fault_indices(fault, received)
        for index, item in enumerate(items):
            problem = _validate(item, ctx.config.instrumentation_key)
            if problem is None and index in refused_by_fault:
                assert fault is not None
                problem = (fault.status, f"devstack: refused with {fault.status} by /_devstack/control")
            if problem is not None:
                errors.append((index, *problem))
                continue
            accepted.append(item)
        ctx.store.add(accepted)
        ctx.stats.bump("telemetry items received", received)
        ctx.stats.bump("telemetry items accepted", len(accepted))
        ctx.stats.bump("telemetry items refused", len(errors))
        for item in accepted:
            ctx.stats.bump(f"telemetry {_base_type(item) or item.get('name')}")
        if not errors:
            status = 200
        elif not accepted and all(code == 400 for _, code, _ in errors):
            status = 400
        else:
            status = 206
        headers = None
        if fault is not None and fault.retry_after_s is not None and errors:
            headers = {"Retry-After": _seconds(fault.retry_after_s)}
        return _track_response(status, received, errors, headers)

    async def telemetry(request: Request) -> Response:
        if request.method == "DELETE":
            return JSONResponse({"cleared": ctx.store.clear()})
        params = request.query_params
        filters = {k: params[k] for k in ("type", "name", "operation_id", "parent_id", "id") if k in params}
        limit = int(params["limit"]) if params.get("limit") else None
        items, stored = ctx.store.query(filters, limit)
        return JSONResponse(
            {
                "items": items,
                "count": len(items),
                "stored": stored,
                "accepted": ctx.store.accepted,
                "dropped": ctx.store.dropped,
            }
        )

    async def control(request: Request) -> Response:
        try:
            spec = json.loads(await request.body() or b"{}")
            _apply_control(ctx, spec)
        except (ValueError, TypeError, KeyError, ScenarioError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        with ctx.lock:
            pending = [{"kind": f.kind, "count": f.count, "status": f.status} for f in ctx.faults if f.count > 0]
        return JSONResponse(
            {
                "instrumentation_key": ctx.config.instrumentation_key,
                "local_auth_disabled": ctx.config.local_auth_disabled,
                "publishers": sorted(ctx.config.publishers) if ctx.config.publishers is not None else None,
                "max_items": ctx.config.max_items,
                "faults": pending,
            }
        )

    routes = [
        *stats_routes(ctx.stats),
        *(Route(path, track, methods=["POST"]) for path in TRACK_PATHS),
        Route("/_devstack/telemetry", telemetry, methods=["GET", "DELETE"]),
        Route("/_devstack/control", control, methods=["POST"]),
    ]
    # Outermost, so that statistics, outages and routing all see the collapsed path.
    return Starlette(routes=routes, middleware=[Middleware(_CollapseSlashes), *service_middleware(ctx.stats)])


class _CollapseSlashes:
    """``IngestionEndpoint=https://host/`` + ``/v2.1/track`` is ``//v2.1/track`` on the wire."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            path = "/" + "/".join(part for part in scope["path"].split("/") if part)
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def _apply_control(ctx: AppInsightsContext, spec: dict[str, Any]) -> None:
    """``{"fail": {"count", "status", "retry_after_s"}}``, ``{"partial": {"count", "status", "indices",
    "retry_after_s"}}`` (``count`` 0 cancels the pending faults), ``{"local_auth_disabled": bool}``,
    ``{"publishers": [names] | null}``, ``{"max_items": N}``; keys combine."""
    for kind in ("fail", "partial"):
        if kind not in spec:
            continue
        fault_spec = spec[kind] or {}
        count = int(fault_spec.get("count", 1))
        with ctx.lock:
            if count <= 0:
                ctx.faults = [f for f in ctx.faults if f.kind != kind]
                continue
            retry_after = fault_spec.get("retry_after_s")
            ctx.faults.append(
                Fault(
                    kind=kind,
                    count=count,
                    status=int(fault_spec.get("status", 429 if kind == "fail" else 500)),
                    retry_after_s=float(retry_after) if retry_after is not None else None,
                    indices=tuple(int(i) for i in fault_spec.get("indices", [0])),
                )
            )
    if "local_auth_disabled" in spec:
        ctx.config.local_auth_disabled = bool(spec["local_auth_disabled"])
    if "publishers" in spec:
        ctx.config.publishers = _publishers(ctx.world, spec["publishers"])
    if "max_items" in spec:
        ctx.config.max_items = max(1, int(spec["max_items"]))
        ctx.store.resize(ctx.config.max_items)


def _authenticate(ctx: AppInsightsContext, request: Request) -> tuple[int, str] | None:
    """None when the request may ingest; else ``(status, reason)``."""
    header = request.headers.get("authorization")
    if header is None:
        return (401, "missing") if ctx.config.local_auth_disabled else None
    token = bearer_token(request)
    if token is None:
        return 401, "malformed"
    try:
        claims = ctx.issuer.verify(token, MONITOR_RESOURCE)
    except jwt.InvalidAudienceError:
        return ctx.config.wrong_audience_status, "audience"
    except jwt.ExpiredSignatureError:
        return 401, "expired"
    except jwt.InvalidTokenError:
        return 401, "invalid"
    publishers = ctx.config.publishers
    if publishers is not None and str(claims.get("oid", "")) not in publishers:
        return 403, "role"
    return None


def _parse(body: bytes, encoding: str) -> tuple[list[Any] | None, str]:
    """The envelopes of a body (JSON array, one JSON object, or one object per line), or None and why not."""
    try:
        encoding = encoding.strip().lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            return None, f"Unsupported Content-Encoding '{encoding}'."
    except (OSError, EOFError, zlib.error):
        return None, f"The body is not valid {encoding} data."
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return None, "The request body is empty."
    try:
        parsed = json.loads(text)
    except ValueError:
        try:  # x-json-stream: one envelope per line
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            return None, f"Invalid JSON: {exc}"
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return None, "The body is not an array of telemetry items."
    return parsed, ""


def _validate(item: Any, instrumentation_key: str) -> tuple[int, str] | None:
    if not isinstance(item, dict):
        return 400, "The telemetry item is not an object."
    for name in ("name", "time"):
        if not _present(item.get(name), "string"):
            return 400, _missing(name, "Envelope", "string", item.get(name))
    try:
        datetime.fromisoformat(str(item["time"]).replace("Z", "+00:00"))
    except ValueError:
        return 400, f"109: Field 'time' on type 'Envelope' is not a valid ISO 8601 date time: '{item['time']}'"
    if str(item.get("iKey") or "").lower() != instrumentation_key:
        return 400, INVALID_IKEY
    data = item.get("data")
    if data is None:
        return None
    if not isinstance(data, dict):
        return 400, _missing("data", "Envelope", "object", data)
    base_type = data.get("baseType")
    required = REQUIRED_FIELDS.get(str(base_type))
    if required is None:
        return None
    base_data = data.get("baseData")
    domain = DOMAIN_TYPE_NAMES.get(str(base_type), str(base_type))
    if not isinstance(base_data, dict):
        return 400, _missing("baseData", "Data", "object", base_data)
    for name, kind in required:
        if not _present(base_data.get(name), kind):
            return 400, _missing(name, domain, kind, base_data.get(name))
    if base_type == "MetricData":
        for point in base_data["metrics"]:
            for name, kind in (("name", "string"), ("value", "double")):
                value = point.get(name) if isinstance(point, dict) else None
                if not _present(value, kind):
                    return 400, _missing(name, "DataPoint", kind, value)
    if base_type == "ExceptionData":
        for details in base_data["exceptions"]:
            value = details.get("message") if isinstance(details, dict) else None
            if not _present(value, "string"):
                return 400, _missing("message", "ExceptionDetails", "string", value)
    return None


def _present(value: Any, kind: str) -> bool:
    if value is None or (kind == "string" and value == ""):
        return False
    if kind == "double" and isinstance(value, bool):
        return False
    return isinstance(value, _JSON_TYPES[kind])


def _missing(name: str, owner: str, expected: str, actual: Any) -> str:
    found = "undefined" if actual is None else type(actual).__name__
    return (
        f"109: Field '{name}' on type '{owner}' is required but missing or empty. Expected: {expected}, Actual: {found}"
    )


def _fault_indices(fault: Fault | None, received: int) -> set[int]:
    if fault is None or fault.kind != "partial":
        return set()
    return {i % received for i in fault.indices if received and -received <= i < received}


def _seconds(value: float | None) -> str:
    return str(max(0, round(value or 0)))


def _track_response(
    status: int, received: int, errors: list[tuple[int, int, str]], headers: dict[str, str] | None = None
) -> Response:
    body = {
        "itemsReceived": received,
        "itemsAccepted": received - len(errors) if status in (200, 206) else 0,
        "errors": [{"index": i, "statusCode": code, "message": message} for i, code, message in errors],
    }
    return JSONResponse(body, status_code=status, headers=headers)


# -- the test view's filters ------------------------------------------------------------------------


def _base_type(envelope: dict[str, Any]) -> str | None:
    data = envelope.get("data")
    return str(data.get("baseType")) if isinstance(data, dict) and data.get("baseType") is not None else None


def _base_data(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope.get("data")
    base = data.get("baseData") if isinstance(data, dict) else None
    return base if isinstance(base, dict) else {}


def _names(envelope: dict[str, Any]) -> set[str]:
    base = _base_data(envelope)
    names = {str(m.get("name")) for m in base.get("metrics") or [] if isinstance(m, dict)}
    if base.get("name") is not None:
        names.add(str(base["name"]))
    return names


def _matches(envelope: dict[str, Any], filters: dict[str, str]) -> bool:
    raw_tags = envelope.get("tags")
    tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
    actual: dict[str, Any] = {
        "type": _base_type(envelope),
        "operation_id": tags.get("ai.operation.id"),
        "parent_id": tags.get("ai.operation.parentId"),
        "id": _base_data(envelope).get("id"),
    }
    for key, value in filters.items():
        if key == "name":
            if value not in _names(envelope):
                return False
        elif actual[key] != value:
            return False
    return True
