"""The Dataverse Web API v9.2 emulator's HTTP surface: URLs, headers, errors, WhoAmI and token checks.

Here: auth and privileges, WhoAmI, EntityDefinitions, single-record create/read/update/upsert/delete
with Dataverse's conditional headers (``If-Match``/``If-None-Match`` on ETags), collection queries with
$select/$filter/$orderby/$top/$count and paging, and change tracking. The webhooks' system jobs
(``asyncoperations``), service endpoints and steps are read through the same query code. ``$batch``, bulk
messages, service protection limits, outgoing webhooks and their system jobs have their own modules in this
package.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.common import bearer_token, stats_routes
from devstack.dataverse.faults import (
    SERVER_ERRORS,
    SQL_TIMEOUT,
    THROTTLE_MESSAGES,
    ConnectionReset,
    Fault,
    FaultInjector,
)
from devstack.dataverse.limits import Governor, Limits
from devstack.dataverse.metadata import Attribute, Table, entity_definition, picklist_definition
from devstack.dataverse.odata import (
    QUERY_SYNTAX_ERROR,
    ODataSyntaxError,
    compile_filter,
    decode_resource_path,
    normalize_datetime,
    parse_key_segment,
)
from devstack.dataverse.store import Record, Store
from devstack.dataverse.system_jobs import SystemCollection
from devstack.dataverse.webhooks import Registration, Reorder, WebhookDispatcher
from devstack.outage import service_middleware
from devstack.stats import Stats
from devstack.tokens import TokenIssuer

API_PREFIX = "/api/data/v9.2"
REQUEST_LOG_ENTRIES = 500_000  # enough for a 100,000-row sync several times over
MAX_PAGE_SIZE = 5000  # Dataverse's default and maximum page size
COUNT_CAP = 5000
JSON_TYPE = "application/json; odata.metadata=minimal"
OPERATIONS = {"create": "Create", "read": "Read", "write": "Write", "delete": "Delete"}


class DataverseFault(Exception):
    """An error answered in Dataverse's shape: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class ApplicationUser:
    app_id: str
    user_id: str
    roles: list[str]


@dataclass
class DataverseContext:
    tables: dict[str, Table]
    store: Store
    issuer: TokenIssuer
    org_url: str
    authority: str  # <authority host>/<tenant>
    users: dict[str, ApplicationUser]  # by app id
    roles: dict[str, dict[str, set[str]]]  # role -> table -> operations
    organization_id: str
    business_unit_id: str
    stats: Stats = field(default_factory=Stats)
    # How a failed change set is answered: "multipart" (the captured Dataverse shape,
    # a changesetresponse holding the failing part) or "single" (strict OData 4.0, one application/http part).
    changeset_failure_shape: str = "multipart"
    # What `Prefer: odata.track-changes` does on a table without change tracking (UNCONFIRMED in Microsoft's docs):
    # "ignore" (answer a normal query, no delta link) or "error" (400).
    untracked_table_behaviour: str = "ignore"
    governor: Governor = field(default_factory=lambda: Governor(Limits()))
    faults: FaultInjector = field(default_factory=FaultInjector)
    webhooks: WebhookDispatcher | None = None
    # Every API request as (arrived, answered: Unix seconds, method, path, status, error code), so a test can
    # check when requests started against when a throttle was answered. Bounded: the oldest are dropped.
    request_log: deque[tuple[float, float, str, str, int, str]] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_ENTRIES)
    )

    @property
    def root(self) -> str:
        return f"{self.org_url}{API_PREFIX}"

    def table_by_set(self, entity_set: str) -> Table | None:
        return next((t for t in self.tables.values() if t.entity_set == entity_set), None)


def error_response(fault: DataverseFault) -> Response:
    return JSONResponse(
        {"error": {"code": fault.code, "message": fault.message}},
        status_code=fault.status,
        headers={"OData-Version": "4.0", **fault.headers},
        media_type=JSON_TYPE,
    )


def dataverse_app(ctx: DataverseContext) -> Starlette:
    async def dispatch(request: Request) -> Response:
        arrived = time.time()
        request_id = str(uuid.uuid4())
        governor = ctx.governor
        server = governor.pick_server(request.cookies.get("ARRAffinity"))
        user: ApplicationUser | None = None
        try:
            user = authenticate(ctx, request)
            operations, bulk_records = await request_size(request)  # before admit: nothing can leak a slot
            fault = ctx.faults.pick(request.method, request.path_params.get("path", ""), bulk_records or operations)
            if fault is not None:
                ctx.stats.bump(f"fault {fault.kind}")
                if fault.kind == "reset":
                    return ConnectionReset()  # type: ignore[return-value]
                if fault.kind == "slow":
                    await asyncio.sleep(fault.delay_ms / 1000)
                else:
                    raise injected(fault)
            throttle = governor.admit(user.user_id, server)
            if throttle is not None:
                ctx.stats.bump(f"throttled {throttle.code}")
                raise DataverseFault(429, throttle.code, throttle.message, {"Retry-After": str(throttle.retry_after_s)})
            server_ms = governor.server_cost_ms(operations=operations, bulk_records=bulk_records)
            try:
                started = time.monotonic()
                response = await route(ctx, request, user)
                await governor.spend(server_ms, already_s=time.monotonic() - started)
            finally:
                governor.finish(user.user_id, server, server_ms)
            events = ctx.store.drain_events()
            if ctx.webhooks is not None and events:
                ctx.webhooks.schedule(events, ctx.tables, user.user_id, time_scale=governor.limits.time_scale)
            ctx.stats.bump(f"requests by user {user.user_id}")
            ctx.stats.bump(f"requests by server {server}")
            if response.status_code < 400:
                ctx.stats.bump("operations executed", operations if bulk_records is None else 1)
                ctx.stats.bump("entitlement records", bulk_records if bulk_records is not None else operations)
        except DataverseFault as fault:
            if fault.status == 401:
                response = Response(status_code=401, headers=fault.headers)
            else:
                response = error_response(fault)
            error_code = fault.code
        else:
            error_code = ""
        path = request.path_params.get("path", "")
        ctx.request_log.append((arrived, time.time(), request.method, path, response.status_code, error_code))
        response.headers["OData-Version"] = "4.0"
        response.headers["REQ_ID"] = request_id
        response.headers["x-ms-service-request-id"] = request_id
        response.headers["x-ms-dop-hint"] = str(governor.limits.hint)
        if user is not None:
            left_requests, left_s = governor.remaining(user.user_id, server)
            response.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(left_requests)
            response.headers["x-ms-ratelimit-time-remaining-xrm-requests"] = f"{left_s:,.2f}"
        response.set_cookie("ARRAffinity", governor.server_ids[server], path="/", secure=True, httponly=True)
        return response

    async def control(request: Request) -> Response:
        """Test-only: replace the fault schedule and token-age limit; change limits; replace the webhook
        registrations, switch reordered delivery on or off (``webhook_reorder``: ``{"window", "seed"}`` or
        null) and set the delivery timeout (``webhook_timeout_s``: model seconds, null for Dataverse's)."""
        action = await request.json()
        if "faults" in action or "max_token_age_s" in action:
            try:
                faults = [Fault.from_dict(f) for f in action.get("faults") or []]
            except (TypeError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            ctx.faults.replace(faults, action.get("max_token_age_s"))
        if "reject_tokens_issued_before_now" in action:  # iat is whole seconds: this second's tokens still pass
            ctx.faults.tokens_not_before = int(time.time()) if action["reject_tokens_issued_before_now"] else None
        if "webhooks" in action and ctx.webhooks is not None:
            try:
                ctx.webhooks.registrations = [Registration.from_dict(w) for w in action["webhooks"]]
            except (KeyError, TypeError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        if "webhook_reorder" in action and ctx.webhooks is not None:
            try:
                ctx.webhooks.set_reorder(Reorder.from_dict(action["webhook_reorder"]))
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        if "webhook_timeout_s" in action and ctx.webhooks is not None:
            timeout = action["webhook_timeout_s"]
            if timeout is not None and (
                isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
            ):
                return JSONResponse({"error": "webhook_timeout_s must be a positive number or null"}, status_code=400)
            ctx.webhooks.timeout_s = None if timeout is None else float(timeout)
        if "seed" in action:
            try:
                with ctx.store.transaction():
                    for logical_name, rows in action["seed"].items():
                        table = ctx.tables[logical_name]
                        for row in rows:
                            data = convert_body(ctx, table, row)
                            record_id = str(data.pop(table.primary_id, None) or uuid.uuid4())
                            ctx.store.insert(table.logical_name, record_id, data)
            except (KeyError, DataverseFault) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            ctx.store.drain_events()  # seeding is set-up, not a change anyone subscribed to
        if action.get("reset_windows"):
            ctx.governor.reset_windows()
        for name, value in (action.get("limits") or {}).items():
            if name in Limits.__dataclass_fields__:
                setattr(ctx.governor.limits, name, value)
        return JSONResponse({"ok": True})

    async def request_log(request: Request) -> Response:
        """Test-only: the API requests that arrived at or after ``since`` (Unix seconds), oldest first:
        ``[arrived, answered, method, path, status, error code]``."""
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since must be Unix seconds (a number)"}, status_code=400)
        return JSONResponse({"requests": [list(entry) for entry in list(ctx.request_log) if entry[0] >= since]})

    async def stats(_: Request) -> Response:
        """The generic counters plus what only the emulator knows: records per table and the most requests
        of one user on one server in flight at once."""
        snapshot = ctx.stats.snapshot()
        snapshot["peak_in_flight"] = ctx.governor.peak_in_flight
        snapshot["records_per_table"] = {
            name: count for name, count in ctx.store.counts_by_table().items() if name in ctx.tables
        }
        return JSONResponse(snapshot)

    async def changes(request: Request) -> Response:
        """Test-only: every row written or deleted after store version ``since``, in every table, read from
        the store itself (not through OData), so a test can see every effect of a write it is testing."""
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since must be a store version (an integer)"}, status_code=400)
        version = ctx.store.current_version()
        written = {
            name: [{"id": r.id, "version": r.version, "data": r.data} for r in ctx.store.changed_since(name, since)]
            for name in ctx.tables
        }
        deleted = {name: ctx.store.deleted_since(name, since) for name in ctx.tables}
        return JSONResponse(
            {
                "version": version,
                "written": {k: v for k, v in written.items() if v},
                "deleted": {k: v for k, v in deleted.items() if v},
            }
        )

    routes = [
        Route("/_devstack/stats", stats, methods=["GET"]),
        Route("/_devstack/changes", changes, methods=["GET"]),
        Route("/_devstack/requests", request_log, methods=["GET"]),
        Route("/_devstack/control", control, methods=["POST"]),
        Route(API_PREFIX + "/{path:path}", dispatch, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
        Route(API_PREFIX, dispatch, methods=["GET"]),
        *stats_routes(ctx.stats),
    ]
    return Starlette(routes=routes, middleware=service_middleware(ctx.stats))


async def request_size(request: Request) -> tuple[int, int | None]:
    """(operations, bulk records): a $batch costs one operation per part; a bulk message per record."""
    path = request.path_params.get("path", "")
    if request.method != "POST":
        return 1, None
    if path.startswith("$batch"):
        body = await request.body()
        return max(1, len(re.findall(rb"^[A-Z]+ \S+ HTTP/1\.1\r?$", body, re.M))), None
    if "/Microsoft.Dynamics.CRM." in path and path.rsplit(".", 1)[-1].endswith("Multiple"):
        try:
            targets = json.loads(await request.body()).get("Targets")
        except (ValueError, AttributeError):
            return 1, None
        return 1, len(targets) if isinstance(targets, list) else 0
    return 1, None


def injected(fault: Fault) -> DataverseFault:
    if fault.kind == "429":
        return DataverseFault(429, fault.code, THROTTLE_MESSAGES[fault.code], {"Retry-After": str(fault.retry_after_s)})
    if fault.kind == "sql_timeout":
        return DataverseFault(500, *SQL_TIMEOUT)
    status = int(fault.kind)
    code, message = SERVER_ERRORS[status]
    return DataverseFault(status, code, message)


# -- auth -------------------------------------------------------------------------------------------
def authenticate(ctx: DataverseContext, request: Request) -> ApplicationUser:
    challenge = {
        "WWW-Authenticate": (f"Bearer authorization_uri={ctx.authority}/oauth2/authorize, resource_id={ctx.org_url}/")
    }
    token = bearer_token(request)
    if token is None:
        raise DataverseFault(401, "", "", challenge)
    try:
        claims = ctx.issuer.verify(token, ctx.org_url)
    except jwt.InvalidTokenError as exc:
        # Wrong audience, bad signature and expiry all answer 401 with the challenge and no body.
        raise DataverseFault(401, "0x8005F101", str(exc), challenge) from exc
    max_age = ctx.faults.max_token_age_s
    if max_age is not None and time.time() - float(claims.get("iat", 0)) > max_age:
        raise DataverseFault(401, "0x8005F101", "token older than the injected maximum age", challenge)
    not_before = ctx.faults.tokens_not_before
    if not_before is not None and float(claims.get("iat", 0)) < not_before:
        raise DataverseFault(401, "0x8005F101", "token issued before the injected revocation", challenge)
    user = ctx.users.get(str(claims.get("appid", "")).lower())
    if user is None:
        raise DataverseFault(403, "0x80072560", "The user is not a member of the organization.")
    return user


def require(ctx: DataverseContext, user: ApplicationUser, table: Table, operation: str) -> None:
    if not user.roles:
        raise DataverseFault(
            403, "0x80042f09", f"Principal user (Id={user.user_id}, type=8) has no security roles assigned."
        )
    for role in user.roles:
        if operation in ctx.roles.get(role, {}).get(table.logical_name, set()):
            return
    privilege = f"prv{OPERATIONS[operation]}{table.schema_name}"
    raise DataverseFault(
        403,
        "0x80040220",
        f"Principal user (Id={user.user_id}, type=8, roleCount={len(user.roles)}, privilegeCount=0, accessMode=0),"
        f" is missing {privilege} privilege (Id={uuid.uuid5(uuid.NAMESPACE_URL, privilege)}) on"
        f" OTC={table.object_type_code} for entity '{table.logical_name}'. context.Caller={user.user_id}",
    )


# -- routing ----------------------------------------------------------------------------------------
_SEGMENT = re.compile(r"^(?P<name>[^()/]+)(?:\((?P<key>.*)\))?$", re.S)


async def route(ctx: DataverseContext, request: Request, user: ApplicationUser) -> Response:
    segments = resource_segments(request)
    method = request.method
    if segments in ([], [""]):
        return JSONResponse({"@odata.context": f"{ctx.root}/$metadata", "value": []}, media_type=JSON_TYPE)
    match = _SEGMENT.match(segments[0])
    if match is None:
        if "(" in segments[0]:  # a key value holding '/' (or '%2F') was split off: Dataverse's answer
            raise DataverseFault(400, "0x8006088a", QUERY_SYNTAX_ERROR)
        raise not_found_segment(segments[0])
    name, key_text = match.group("name"), match.group("key")
    if name == "WhoAmI":
        if method != "GET" or (key_text not in (None, "")) or len(segments) > 1:
            raise DataverseFault(
                404, "0x8006088a", f"No HTTP resource was found that matches the request URI '{request.url}'."
            )
        return JSONResponse(
            {
                "@odata.context": f"{ctx.root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": ctx.business_unit_id,
                "UserId": user.user_id,
                "OrganizationId": ctx.organization_id,
            },
            media_type=JSON_TYPE,
        )
    if name == "$batch":
        if method != "POST":
            raise DataverseFault(405, "0x80040227", "The $batch resource accepts only POST.")
        from devstack.dataverse.batch import execute_batch

        return await execute_batch(ctx, request, user)
    if name == "EntityDefinitions":
        return entity_definitions(ctx, request, key_text, segments[1:])
    table = ctx.table_by_set(name)
    if table is None:
        collection = ctx.webhooks.collection(name) if ctx.webhooks is not None else None
        if collection is None:
            raise not_found_segment(name)
        return system_collection(ctx, request, collection, key_text, segments[1:])
    if len(segments) == 2 and key_text is None and segments[1].startswith("Microsoft.Dynamics.CRM."):
        action = segments[1].removeprefix("Microsoft.Dynamics.CRM.")
        from devstack.dataverse.bulk import ACTIONS, execute_bulk

        if action in ACTIONS:
            return await execute_bulk(ctx, request, user, table, action)
    if len(segments) > 1:
        raise not_found_segment(segments[1])
    if key_text is None:
        if method == "GET":
            require(ctx, user, table, "read")
            return query(ctx, request, table)
        if method == "POST":
            require(ctx, user, table, "create")
            return create(ctx, table, await json_body(request, table), request)
        raise DataverseFault(405, "0x80040227", f"The requested operation is not supported on '{name}'.")
    try:
        key = parse_key_segment(key_text)
    except ODataSyntaxError as exc:
        raise DataverseFault(400, "0x0", str(exc)) from exc
    if method == "GET":
        require(ctx, user, table, "read")
        return read_one(ctx, request, table, key, key_text)
    if method == "PATCH":
        require(ctx, user, table, "write")
        return upsert(ctx, request, table, key, key_text, await json_body(request, table), user)
    if method == "DELETE":
        require(ctx, user, table, "delete")
        with ctx.store.transaction():
            record = find(ctx, table, key, must_exist=True)
            assert record is not None
            check_if_match(request, record)
            ctx.store.delete(record)
        return Response(status_code=204)
    raise DataverseFault(405, "0x80040227", f"The requested operation is not supported on '{name}'.")


_API_DEPTH = len(API_PREFIX.strip("/").split("/"))


def resource_segments(request: Request) -> list[str]:
    """The path below the Web API root, decoded from the raw request target as Dataverse decodes it."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    try:
        segments = decode_resource_path(raw)
    except ODataSyntaxError as exc:
        raise DataverseFault(400, "0x8006088a", str(exc)) from exc
    return segments[1 + _API_DEPTH :]  # "", "api", "data", "v9.2"


def entity_reference(ctx: DataverseContext, value: str) -> tuple[str, str | None]:
    """``/accounts(accountnumber='A%2B1')`` (an ``@odata.bind`` or ``@odata.id``) -> (entity set, key text)."""
    text = value[len(ctx.root) :] if value.startswith(ctx.root) else value
    try:
        segments = decode_resource_path(text.lstrip("/"))
    except ODataSyntaxError as exc:
        raise DataverseFault(400, "0x8006088a", str(exc)) from exc
    match = _SEGMENT.match(segments[0])
    if len(segments) > 1 or match is None:
        raise DataverseFault(400, "0x8006088a", QUERY_SYNTAX_ERROR)
    return match.group("name"), match.group("key")


def not_found_segment(segment: str) -> DataverseFault:
    return DataverseFault(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


async def json_body(request: Request, table: Table) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise DataverseFault(400, "0x80048d19", payload_error(table, f"Invalid JSON. {exc}")) from exc
    if not isinstance(body, dict):
        raise DataverseFault(400, "0x80048d19", payload_error(table, "The payload must be a JSON object."))
    return body


def payload_error(table: Table, inner: str) -> str:
    return (
        f"Error identified in Payload provided by the user for Entity :'{table.entity_set}', For more information on"
        " this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
        f"InnerException : Microsoft.OData.ODataException: {inner}"
    )


# -- metadata -----------------------------------------------------------------------------------------
def entity_definitions(ctx: DataverseContext, request: Request, key_text: str | None, rest: list[str]) -> Response:
    expand = {e.strip().split("(")[0] for e in request.query_params.get("$expand", "").split(",") if e.strip()}
    if key_text is None:
        tables = list(ctx.tables.values())
        flt = request.query_params.get("$filter")
        if flt:
            m = re.fullmatch(r"\s*LogicalName\s+eq\s+'([^']*)'\s*", flt)
            if m is None:
                raise DataverseFault(400, "0x0", f"The $filter '{flt}' is not supported on EntityDefinitions.")
            tables = [t for t in tables if t.logical_name == m.group(1)]
        return JSONResponse(
            {
                "@odata.context": f"{ctx.root}/$metadata#EntityDefinitions",
                "value": [entity_definition(t, expand=expand) for t in tables],
            },
            media_type=JSON_TYPE,
        )
    m = re.fullmatch(r"LogicalName='([^']*)'", key_text)
    table = ctx.tables.get(m.group(1)) if m else None
    if table is None:
        raise DataverseFault(404, "0x80040217", f"Could not find an entity with the specified key: {key_text}")
    if not rest:
        body = entity_definition(table, expand=expand)
        body["@odata.context"] = f"{ctx.root}/$metadata#EntityDefinitions/$entity"
        return JSONResponse(body, media_type=JSON_TYPE)
    if rest[0] == "Attributes":
        from devstack.dataverse.metadata import attribute_definition

        # The collection, optionally cast to one attribute type (how clients read every picklist at once).
        cast = rest[1] if len(rest) > 1 else None
        if cast not in (None, "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"):
            raise not_found_segment(cast or "")
        attributes = [a for a in table.attributes.values() if cast is None or a.type == "picklist"]
        render = picklist_definition if cast else attribute_definition
        return JSONResponse(
            {
                "@odata.context": f"{ctx.root}/$metadata#EntityDefinitions('{table.logical_name}')/Attributes",
                "value": [render(table, a) for a in attributes],
            },
            media_type=JSON_TYPE,
        )
    am = re.fullmatch(r"Attributes\(LogicalName='([^']*)'\)", rest[0])
    attr = table.attributes.get(am.group(1)) if am else None
    if attr is None:
        raise not_found_segment(rest[0])
    if len(rest) > 1 and rest[1] == "Microsoft.Dynamics.CRM.PicklistAttributeMetadata" and attr.type == "picklist":
        return JSONResponse(picklist_definition(table, attr), media_type=JSON_TYPE)
    from devstack.dataverse.metadata import attribute_definition

    return JSONResponse(attribute_definition(table, attr), media_type=JSON_TYPE)


# -- records ------------------------------------------------------------------------------------------
def find(ctx: DataverseContext, table: Table, key: str | dict[str, Any], *, must_exist: bool) -> Record | None:
    if isinstance(key, str):
        record = ctx.store.get(table.logical_name, key)
        if record is None and must_exist:
            raise DataverseFault(404, "0x80040217", f"{table.logical_name} With Id = {key} Does Not Exist")
        return record
    if table.find_key(set(key)) is None:
        # Code and message for an undefined key: UNCONFIRMED (Dataverse's code-to-status table maps 0x80060890 to 400).
        raise DataverseFault(
            400,
            "0x80060890",
            f"The specified key attributes are not a defined key for the {table.logical_name} entity",
        )
    record = ctx.store.find_by_key(table.logical_name, {k: _stored_key_value(table, k, v) for k, v in key.items()})
    if record is None and must_exist:
        raise DataverseFault(
            404, "0x80060891", f"A record with the specified key values does not exist in {table.logical_name} entity"
        )
    return record


def _stored_key_value(table: Table, name: str, value: Any) -> Any:
    attr = table.attributes.get(name) or table.by_value_name(name)
    if attr is not None and attr.type == "datetime" and isinstance(value, str):
        return normalize_datetime(value)
    return value


def convert_body(ctx: DataverseContext, table: Table, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a write body against the table's metadata and turn it into stored columns."""
    data: dict[str, Any] = {}
    for name, value in body.items():
        if name.endswith("@odata.bind"):
            nav = name[: -len("@odata.bind")]
            attr = table.by_navigation(nav)
            if attr is None:
                raise DataverseFault(
                    400,
                    "0x80048d19",
                    payload_error(
                        table,
                        f"An undeclared property '{nav}' which only has property annotations in the payload but no"
                        " property value was found in the payload.",
                    ),
                )
            data[attr.logical_name] = resolve_bind(ctx, attr, value) if value is not None else None
            continue
        if name.startswith("@") or "@" in name:
            continue
        attr = table.attributes.get(name)
        if attr is None or attr.logical_name in ("createdon", "modifiedon", "versionnumber") or attr.type == "lookup":
            raise DataverseFault(
                400,
                "0x80048d19",
                payload_error(
                    table,
                    f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{table.logical_name}'."
                    " Make sure to only use property names that are defined by the type or mark the type as open type.",
                ),
            )
        data[name] = coerce(table, attr, value)
    return data


def coerce(table: Table, attr: Attribute, value: Any) -> Any:
    if value is None:
        return None
    kind = attr.type

    def wrong(edm: str) -> DataverseFault:
        return DataverseFault(
            400,
            "0x80048d19",
            payload_error(table, f"Cannot convert the literal '{value}' to the expected type '{edm}'."),
        )

    if kind in ("string", "memo"):
        if not isinstance(value, str):
            raise wrong("Edm.String")
        if attr.max_length is not None and len(value) > attr.max_length:
            raise DataverseFault(
                400,
                "0x80044331",
                f"A validation error occurred.  The length of the '{attr.logical_name}' attribute of the"
                f" '{table.logical_name}' entity exceeded the maximum allowed length of '{attr.max_length}'.",
            )
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("Edm.Int32")
        return value
    if kind in ("decimal", "money"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("Edm.Decimal")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("Edm.Boolean")
        return value
    if kind == "datetime":
        try:
            return normalize_datetime(str(value))
        except ValueError as exc:
            raise wrong("Edm.DateTimeOffset") from exc
    if kind == "picklist":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("Edm.Int32")
        if attr.options and value not in attr.options:
            # Code for an out-of-range choice is UNCONFIRMED (3P name PicklistValueOutOfRange).
            raise DataverseFault(
                400,
                "0x8004431a",
                f"A validation error occurred. The value {value} of '{attr.logical_name}' on record of type"
                f" '{table.logical_name}' is outside the valid range. Accepted Values: "
                + ",".join(str(v) for v in sorted(attr.options)),
            )
        return value
    if kind == "uniqueidentifier":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError as exc:
            raise wrong("Edm.Guid") from exc
    return value


def resolve_bind(ctx: DataverseContext, attr: Attribute, value: Any) -> str:
    """``/accounts(<guid>)``, ``accounts(<guid>)`` or ``/accounts(accountnumber='A1')`` -> the target id."""
    text = str(value)
    target = ctx.tables[attr.target or ""]
    name, key_text = entity_reference(ctx, text)
    if key_text is None or name != target.entity_set:
        raise DataverseFault(400, "0x80048d19", payload_error(target, f"Invalid @odata.bind value '{text}'."))
    try:
        key = parse_key_segment(key_text)
    except ODataSyntaxError as exc:
        raise DataverseFault(400, "0x0", str(exc)) from exc
    record = find(ctx, target, key, must_exist=True)
    assert record is not None
    return record.id


def represent(ctx: DataverseContext, table: Table, record: Record, select: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"@odata.etag": record.etag}
    columns = select if select else [a.value_name for a in table.attributes.values()]
    for column in columns:
        attr = table.by_value_name(column)
        if attr is None or column == table.primary_id:
            continue
        out[column] = column_value(table, record, attr)
    out[table.primary_id] = record.id  # after the columns, as Dataverse writes it
    return out


def column_value(table: Table, record: Record, attr: Attribute) -> Any:
    if attr.logical_name == table.primary_id:
        return record.id
    if attr.logical_name == "createdon":
        return record.createdon
    if attr.logical_name == "modifiedon":
        return record.modifiedon
    if attr.logical_name == "versionnumber":
        return record.version
    return record.data.get(attr.logical_name)


def parse_select(table: Table, request: Request) -> list[str] | None:
    raw = request.query_params.get("$select")
    if not raw:
        return None
    columns = [c.strip() for c in raw.split(",") if c.strip()]
    for column in columns:
        if table.by_value_name(column) is None:
            raise DataverseFault(
                400,
                "0x0",
                f"Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{table.logical_name}'.",
            )
    return columns


def context_url(ctx: DataverseContext, table: Table, select: list[str] | None, *, entity: bool) -> str:
    suffix = f"({','.join(select)})" if select else ""
    return f"{ctx.root}/$metadata#{table.entity_set}{suffix}" + ("/$entity" if entity else "")


def prefers(request: Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            found[name.strip().lower()] = value.strip().strip('"')
    return found


def entity_url(ctx: DataverseContext, table: Table, record: Record, key_text: str | None = None) -> str:
    # The key text was decoded from the request: percent-encode it again, as a URL in a header must be.
    key = urllib.parse.quote(key_text, safe="=',") if key_text is not None else record.id
    return f"{ctx.root}/{table.entity_set}({key})"


def created_response(
    ctx: DataverseContext, table: Table, record: Record, request: Request, *, key_text: str | None, created: bool
) -> Response:
    if prefers(request).get("return") == "representation":
        select = parse_select(table, request)
        body = {"@odata.context": context_url(ctx, table, select, entity=True), **represent(ctx, table, record, select)}
        return JSONResponse(
            body,
            status_code=201 if created else 200,
            headers={"ETag": record.etag, "Preference-Applied": "return=representation"},
            media_type=JSON_TYPE,
        )
    url = entity_url(ctx, table, record, key_text)
    # Microsoft's docs show only OData-EntityId; $batch parts carry Location too. We send both.
    return Response(status_code=204, headers={"OData-EntityId": url, "Location": url})


def check_unique_keys(ctx: DataverseContext, table: Table, data: dict[str, Any], own_id: str | None) -> None:
    for key in table.keys:
        values = {a: data.get(a) for a in key.attributes}
        if any(v is None for v in values.values()):
            continue
        other = ctx.store.find_by_key(table.logical_name, values)
        if other is not None and other.id != own_id:
            attrs = ",".join(key.attributes)
            raise DataverseFault(
                412,
                "0x80060892",
                f"Entity Key {key.name} violated. A record with the same value for {attrs} already exists.",
            )


def create(ctx: DataverseContext, table: Table, body: dict[str, Any], request: Request) -> Response:
    with ctx.store.transaction():
        data = convert_body(ctx, table, body)
        record_id = str(data.pop(table.primary_id, None) or uuid.uuid4())
        if ctx.store.get(table.logical_name, record_id) is not None:
            raise DataverseFault(412, "0x80040237", "A record with matching key values already exists.")
        check_required(table, data)
        check_unique_keys(ctx, table, data, None)
        record = ctx.store.insert(table.logical_name, record_id, data)
    return created_response(ctx, table, record, request, key_text=None, created=True)


def check_required(table: Table, data: dict[str, Any]) -> None:
    for attr in table.attributes.values():
        if attr.required and data.get(attr.logical_name) is None:
            raise DataverseFault(400, "0x80040203", f"Attribute '{attr.logical_name}' cannot be NULL")


def check_if_match(request: Request, record: Record) -> None:
    if_match = request.headers.get("if-match")
    if if_match and if_match.strip() != "*" and if_match.strip() != record.etag:
        raise DataverseFault(
            412, "0x80060882", "The version of the existing record doesn't match the RowVersion property provided."
        )


def upsert(
    ctx: DataverseContext,
    request: Request,
    table: Table,
    key: str | dict[str, Any],
    key_text: str,
    body: dict[str, Any],
    user: ApplicationUser,
) -> Response:
    if_match = (request.headers.get("if-match") or "").strip()
    if_none_match = (request.headers.get("if-none-match") or "").strip()
    with ctx.store.transaction():
        existing = find(ctx, table, key, must_exist=bool(if_match))
        if existing is not None:
            if if_none_match == "*":
                raise DataverseFault(412, "0x80040237", "A record with matching key values already exists.")
            check_if_match(request, existing)
            data = convert_body(ctx, table, body)
            data.pop(table.primary_id, None)
            if isinstance(key, dict):
                for name in key:  # keys addressed in the URL cannot change through that URL
                    data.pop(name, None)
            check_unique_keys(ctx, table, {**existing.data, **data}, existing.id)
            record = ctx.store.update(existing, data)
            created = False
        else:
            require(ctx, user, table, "create")
            data = convert_body(ctx, table, body)
            if isinstance(key, str):
                record_id = key
            else:
                for name, value in key.items():  # body key values win over URL key values
                    data.setdefault(name, _stored_key_value(table, name, value))
                record_id = str(data.pop(table.primary_id, None) or uuid.uuid4())
            check_required(table, data)
            check_unique_keys(ctx, table, data, None)
            record = ctx.store.insert(table.logical_name, record_id, data)
            created = True
    return created_response(
        ctx, table, record, request, key_text=key_text if isinstance(key, dict) else None, created=created
    )


def read_one(
    ctx: DataverseContext, request: Request, table: Table, key: str | dict[str, Any], key_text: str
) -> Response:
    select = parse_select(table, request)
    record = find(ctx, table, key, must_exist=True)
    assert record is not None
    if_none_match = (request.headers.get("if-none-match") or "").strip()
    if if_none_match and if_none_match != "null" and if_none_match == record.etag:
        return Response(status_code=304, headers={"ETag": record.etag})
    body = {"@odata.context": context_url(ctx, table, select, entity=True), **represent(ctx, table, record, select)}
    return JSONResponse(body, headers={"ETag": record.etag}, media_type=JSON_TYPE)


# -- system collections -------------------------------------------------------------------------------
def system_collection(
    ctx: DataverseContext, request: Request, collection: SystemCollection, key_text: str | None, rest: list[str]
) -> Response:
    """``asyncoperations``, ``serviceendpoints`` and ``sdkmessageprocessingsteps``: read like any table (the
    same query code answers them), never written. Dataverse lets a caller with the privileges update or delete
    these rows; the emulator has no use for that and answers 405. Privileges are not checked for them (an
    authenticated application user reads them; Dataverse's prvReadAsyncOperation is not modelled)."""
    table = collection.table
    if rest:
        raise not_found_segment(rest[0])
    if request.method != "GET":
        raise DataverseFault(405, "0x80040227", f"The emulator serves '{table.entity_set}' read-only.")
    if key_text is None:
        return query(ctx, request, table, rows=collection.rows())
    try:
        key = parse_key_segment(key_text)
    except ODataSyntaxError as exc:
        raise DataverseFault(400, "0x0", str(exc)) from exc
    if not isinstance(key, str):
        raise DataverseFault(
            400,
            "0x80060890",
            f"The specified key attributes are not a defined key for the {table.logical_name} entity",
        )
    select = parse_select(table, request)
    row = collection.get(key)
    if row is None:
        raise DataverseFault(404, "0x80040217", f"{table.logical_name} With Id = {key} Does Not Exist")
    etag = str(row["@odata.etag"])
    if_none_match = (request.headers.get("if-none-match") or "").strip()
    if if_none_match and if_none_match != "null" and if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    columns = [c for c in (select or []) if c != table.primary_id]
    shaped = {"@odata.etag": etag, **{c: row.get(c) for c in columns}, table.primary_id: key} if select else row
    body = {"@odata.context": context_url(ctx, table, select, entity=True), **shaped}
    return JSONResponse(body, headers={"ETag": etag}, media_type=JSON_TYPE)


# -- queries ------------------------------------------------------------------------------------------
def query(ctx: DataverseContext, request: Request, table: Table, rows: list[dict[str, Any]] | None = None) -> Response:
    """A collection read; ``rows`` (already in ``represent`` shape) stand in for the store's when given."""
    params = request.query_params
    tracking = "odata.track-changes" in prefers(request) or "$deltatoken" in params
    if tracking and not table.change_tracking:
        if ctx.untracked_table_behaviour == "error":
            raise DataverseFault(
                400, "0x80040203", f"Change tracking is not enabled for the {table.logical_name} entity."
            )
        tracking = "$deltatoken" in params
        if tracking:
            raise DataverseFault(400, "0x80040203", "The delta token is not valid for this entity.")
    if tracking:
        return tracked_query(ctx, request, table)
    if "$skip" in params:
        raise DataverseFault(400, "0x0", "The query parameter $skip is not supported")  # text UNCONFIRMED
    select = parse_select(table, request)

    def resolve(name: str) -> Any:
        attr = table.by_value_name(name)
        if attr is None:
            raise DataverseFault(
                400,
                "0x0",
                f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table.logical_name}'.",
            )
        return lambda row: row.get(name)

    if rows is None:
        rows = [represent(ctx, table, r, None) for r in ctx.store.all(table.logical_name)]
    if params.get("$filter"):
        try:
            predicate = compile_filter(params["$filter"], resolve)
        except ODataSyntaxError as exc:
            raise DataverseFault(400, "0x0", str(exc)) from exc
        rows = [r for r in rows if predicate(r)]
    for clause in reversed([c.strip() for c in params.get("$orderby", "").split(",") if c.strip()]):
        column, _, direction = clause.partition(" ")
        resolve(column)
        rows.sort(key=_order_key(column), reverse=direction.strip() == "desc")
    total = len(rows)
    prefer = prefers(request)
    headers: dict[str, str] = {}
    page_size = MAX_PAGE_SIZE
    if "odata.maxpagesize" in prefer:
        try:
            page_size = max(1, min(MAX_PAGE_SIZE, int(prefer["odata.maxpagesize"])))
        except ValueError as exc:
            raise DataverseFault(400, "0x0", "Invalid odata.maxpagesize preference") from exc
        headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
    elif params.get("$top"):
        try:
            rows = rows[: int(params["$top"])]
        except ValueError as exc:
            raise DataverseFault(400, "0x0", f"Invalid value '{params['$top']}' for $top query option") from exc
    page = 1
    if params.get("$skiptoken"):
        m = re.search(r'pagenumber="(\d+)"', urllib.parse.unquote(params["$skiptoken"]))
        if m is None:
            raise DataverseFault(400, "0x80040203", "Invalid paging cookie")
        page = int(m.group(1))
    start = (page - 1) * page_size
    chunk = rows[start : start + page_size]
    body: dict[str, Any] = {"@odata.context": context_url(ctx, table, select, entity=False)}
    if params.get("$count") == "true":
        body["@odata.count"] = min(total, COUNT_CAP)
    body["value"] = [_project(r, table, select) for r in chunk]
    if start + page_size < len(rows):
        last = chunk[-1][table.primary_id] if chunk else ""
        cookie = urllib.parse.quote(f'<cookie page="{page}"><{table.primary_id} last="{{{last.upper()}}}" /></cookie>')
        token = f'<cookie pagenumber="{page + 1}" pagingcookie="{cookie}" istracking="False" />'
        query_items = [(k, v) for k, v in params.multi_items() if k != "$skiptoken"] + [("$skiptoken", token)]
        body["@odata.nextLink"] = (
            f"{ctx.root}/{table.entity_set}?{urllib.parse.urlencode(query_items, quote_via=urllib.parse.quote)}"
        )
    return JSONResponse(body, headers=headers, media_type=JSON_TYPE)


def tracked_query(ctx: DataverseContext, request: Request, table: Table) -> Response:
    """Change tracking: initial read with a delta link, then deltas."""
    params = request.query_params
    for option in ("$filter", "$orderby", "$expand", "$top"):
        if option in params:
            # Status and code UNCONFIRMED; the message is the documented one.
            raise DataverseFault(
                400, "0x80040203", f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.'
            )
    select = parse_select(table, request)
    version_now = ctx.store.current_version()
    stamp = f"{version_now}!{datetime.now(UTC).strftime('%m/%d/%Y %H:%M:%S')}"
    base_items = [(k, v) for k, v in params.multi_items() if k not in ("$deltatoken", "$skiptoken")]
    delta_link = f"{ctx.root}/{table.entity_set}?" + urllib.parse.urlencode(
        [*base_items, ("$deltatoken", stamp)], quote_via=urllib.parse.quote
    )
    token = params.get("$deltatoken")
    if token is None:
        response = query(ctx, _without_tracking(request), table)
        body = json.loads(bytes(response.body))
        if "@odata.nextLink" not in body:
            body["@odata.deltaLink"] = delta_link  # on the last page only
        headers = dict(response.headers)
        headers.pop("content-length", None)
        prefs = [p for p in [headers.get("preference-applied"), "odata.track-changes"] if p]
        headers["Preference-Applied"] = ",".join(prefs)
        return JSONResponse(body, headers=headers, media_type=JSON_TYPE)
    try:
        since = int(urllib.parse.unquote(token).split("!", 1)[0])
    except ValueError as exc:
        raise DataverseFault(400, "0x80040203", "The delta token is not valid.") from exc
    changed = [
        _project(represent(ctx, table, r, None), table, select)
        for r in ctx.store.changed_since(table.logical_name, since)
    ]
    deleted = [
        {
            "@odata.context": f"{ctx.root}/$metadata#{table.entity_set}/$deletedEntity",
            "id": record_id,
            "reason": "deleted",
        }
        for record_id in ctx.store.deleted_since(table.logical_name, since)
        if ctx.store.get(table.logical_name, record_id) is None
    ]
    suffix = f"({','.join(select)})" if select else ""
    return JSONResponse(
        {
            "@odata.context": f"{ctx.root}/$metadata#{table.entity_set}{suffix}/$delta",
            "@odata.deltaLink": delta_link,
            "value": changed + deleted,
        },
        media_type=JSON_TYPE,
    )


def _without_tracking(request: Request) -> Request:
    """The same request minus the track-changes preference (for the initial full read)."""
    scope = dict(request.scope)
    headers = []
    for name, value in scope["headers"]:
        if name.lower() == b"prefer":
            kept = [p for p in value.decode().split(",") if "odata.track-changes" not in p]
            if not kept:
                continue
            value = ",".join(kept).encode()
        headers.append((name, value))
    scope["headers"] = headers
    return Request(scope, request.receive)


def _order_key(column: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: (row.get(column) is not None, _sort_key(row.get(column)))


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        return (1, value.lower())
    if value is None:
        return (0, 0)
    return (0, value)


def _project(row: dict[str, Any], table: Table, select: list[str] | None) -> dict[str, Any]:
    if not select:
        return row
    keep = {"@odata.etag", table.primary_id, *select}
    return {k: v for k, v in row.items() if k in keep}
