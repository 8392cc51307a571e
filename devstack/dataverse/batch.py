"""``POST $batch``: multipart/mixed in, multipart/mixed out.

The parser is lenient (CRLF or LF, extra blank lines, quoted or bare boundaries); the writer emits
the exact shape of Microsoft's documented examples. Each embedded request runs through the same handlers
as a direct call.
Change sets are one transaction (a savepoint): at the first failure everything in them rolls back.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from devstack.dataverse.server import (
    API_PREFIX,
    JSON_TYPE,
    ApplicationUser,
    DataverseContext,
    DataverseFault,
    error_response,
    prefers,
    route,
)

MAX_BATCH_OPERATIONS = 1000
CRLF = "\r\n"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_CONTENT_ID_REF = re.compile(r"^\$(\d+)")
# The order Dataverse writes part headers in (as in its documented responses); others follow.
HEADER_ORDER = {
    name: i for i, name in enumerate(["req_id", "content-type", "odata-version", "location", "odata-entityid"])
}
# Starlette stores header names in lower case; parts are written with Dataverse's spelling.
HEADER_SPELLING = {
    "odata-entityid": "OData-EntityId",
    "odata-version": "OData-Version",
    "location": "Location",
    "req_id": "REQ_ID",
    "content-type": "Content-Type",
    "etag": "ETag",
    "preference-applied": "Preference-Applied",
    "retry-after": "Retry-After",
}


@dataclass
class Operation:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    operations: list[Operation] = field(default_factory=list)


@dataclass
class PartResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


class BatchFormatError(ValueError):
    pass


def boundary_of(content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not match or not content_type.lower().startswith("multipart/mixed"):
        raise BatchFormatError(
            "The content type of the batch request must be 'multipart/mixed' with a boundary parameter."
        )
    return match.group(1).strip()


def split_parts(body: str, boundary: str) -> list[str]:
    lines = body.replace("\r\n", "\n").split("\n")
    parts: list[list[str]] = []
    current: list[str] | None = None
    closed = False
    for line in lines:
        stripped = line.rstrip()
        if stripped == f"--{boundary}--":
            if current is not None:
                parts.append(current)
            closed = True
            break
        if stripped == f"--{boundary}":
            if current is not None:
                parts.append(current)
            current = []
            continue
        if current is not None:
            current.append(line)
    if not closed:
        raise BatchFormatError(f"The batch body is not terminated by '--{boundary}--'.")
    return ["\n".join(p) for p in parts]


def _headers_and_rest(text: str) -> tuple[dict[str, str], str]:
    text = text.lstrip("\n")
    head, _, rest = text.partition("\n\n")
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def parse_operation(text: str) -> Operation:
    part_headers, rest = _headers_and_rest(text)
    if not part_headers.get("content-type", "").lower().startswith("application/http"):
        raise BatchFormatError("Each batch part must have Content-Type: application/http.")
    rest = rest.lstrip("\n")
    request_line, _, after = rest.partition("\n")
    method, _, target = request_line.strip().partition(" ")
    url = target.rsplit(" HTTP/", 1)[0].strip()
    if not method or not url:
        raise BatchFormatError(f"Malformed request line in batch part: '{request_line}'.")
    headers, body = _headers_and_rest("\n" + after) if after.strip() else ({}, "")
    if not after.strip():
        headers = {}
    body = body.strip("\n")
    return Operation(method.upper(), url, headers, body.encode(), part_headers.get("content-id"))


def parse_batch(content_type: str, raw: bytes) -> list[Operation | ChangeSet]:
    boundary = boundary_of(content_type)
    items: list[Operation | ChangeSet] = []
    for part in split_parts(raw.decode("utf-8"), boundary):
        headers, rest = _headers_and_rest(part)
        kind = headers.get("content-type", "").lower()
        if kind.startswith("multipart/mixed"):
            inner = boundary_of(headers["content-type"])
            changeset = ChangeSet()
            for inner_part in split_parts(rest, inner):
                sub_headers, _ = _headers_and_rest(inner_part)
                if sub_headers.get("content-type", "").lower().startswith("multipart/"):
                    raise BatchFormatError("Change sets cannot be nested.")
                changeset.operations.append(parse_operation(inner_part))
            items.append(changeset)
        else:
            items.append(parse_operation(part))
    return items


async def execute_batch(ctx: DataverseContext, request: Request, user: ApplicationUser) -> Response:
    try:
        items = parse_batch(request.headers.get("content-type", ""), await request.body())
    except BatchFormatError as exc:
        raise DataverseFault(400, "0x0", str(exc)) from exc
    count = sum(len(i.operations) if isinstance(i, ChangeSet) else 1 for i in items)
    if count > MAX_BATCH_OPERATIONS:
        raise DataverseFault(
            400,
            "0x0",
            "The current change set contains too many operations. A maximum number of"
            f" '{MAX_BATCH_OPERATIONS}' operations are allowed in a change set",
        )
    continue_on_error = "odata.continue-on-error" in prefers(request)
    content_ids: dict[str, str] = {}
    rendered: list[str] = []
    boundary = f"batchresponse_{uuid.uuid4()}"
    top_status = 200
    for item in items:
        if isinstance(item, ChangeSet):
            results, failed = await _run_changeset(ctx, user, item, content_ids)
            if failed and ctx.changeset_failure_shape == "single":
                rendered.append(_render_part(results[-1]))  # strict OData: one part instead of a multipart
            else:
                rendered.append(_render_changeset(results))
        else:
            result = await _run_operation(ctx, user, item, content_ids, in_changeset=False)
            failed = result.status >= 400
            rendered.append(_render_part(result))
        if failed and not continue_on_error:
            top_status = results[-1].status if isinstance(item, ChangeSet) else result.status
            rendered = rendered[-1:]  # the body carries only the first failure, as Dataverse's does
            break
    body = "".join(f"--{boundary}{CRLF}{part}" for part in rendered) + f"--{boundary}--{CRLF}"
    return Response(
        body.encode(),
        status_code=top_status,
        media_type=None,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )


async def _run_changeset(
    ctx: DataverseContext, user: ApplicationUser, changeset: ChangeSet, content_ids: dict[str, str]
) -> tuple[list[PartResult], bool]:
    results: list[PartResult] = []

    class _Rollback(Exception):
        pass

    try:
        with ctx.store.transaction():
            for op in changeset.operations:
                result = await _run_operation(ctx, user, op, content_ids, in_changeset=True)
                if result.status >= 400:
                    results = [result]  # the failed change set answers with the failing operation only
                    raise _Rollback
                results.append(result)
    except _Rollback:
        for op in changeset.operations:
            if op.content_id:
                content_ids.pop(op.content_id, None)
        return results, True
    return results, False


def _resolve_references(text: str, content_ids: dict[str, str]) -> str:
    match = _CONTENT_ID_REF.match(text)
    if not match:
        return text
    target = content_ids.get(match.group(1))
    if target is None:
        raise DataverseFault(
            400, "0x0", f"Content-ID Reference: '${match.group(1)}' does not exist in the batch context."
        )
    return target + text[match.end() :]


def _relative_path(ctx: DataverseContext, url: str, content_ids: dict[str, str]) -> str:
    url = _resolve_references(url, content_ids)
    if url.startswith(("http://", "https://")):
        parts = urlsplit(url)
        url = parts.path + (f"?{parts.query}" if parts.query else "")
    if url.startswith(API_PREFIX + "/"):
        url = url[len(API_PREFIX) + 1 :]
    return url.lstrip("/")


async def _run_operation(
    ctx: DataverseContext, user: ApplicationUser, op: Operation, content_ids: dict[str, str], *, in_changeset: bool
) -> PartResult:
    request_id = str(uuid.uuid4())
    try:
        if in_changeset and op.method == "GET":
            raise DataverseFault(400, "0x0", "GET requests are not allowed inside a change set.")
        relative = _relative_path(ctx, op.url, content_ids)
        body = op.body
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                for key, value in list(payload.items()):
                    if (key.endswith("@odata.bind") or key == "@odata.id") and isinstance(value, str):
                        payload[key] = _resolve_references(value, content_ids)
                body = json.dumps(payload).encode()
        path, _, query = relative.partition("?")
        scope = {
            "type": "http",
            "method": op.method,
            "path": f"{API_PREFIX}/{path}",
            "raw_path": f"{API_PREFIX}/{path}".encode(),
            "query_string": query.encode(),
            "headers": [(k.encode(), v.encode()) for k, v in op.headers.items()],
            "path_params": {"path": path},
            "scheme": "https",
            "server": ("127.0.0.1", 443),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        response = await route(ctx, Request(scope, receive), user)
    except DataverseFault as fault:
        response = error_response(fault)
        response.headers["REQ_ID"] = request_id
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-length",)]
    if response.status_code == 200 and response.body:
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        headers.append(("Content-Type", JSON_TYPE + "; odata.streaming=true"))
    if not any(k.lower() == "odata-version" for k, _ in headers):
        headers.append(("OData-Version", "4.0"))
    headers.sort(key=lambda item: HEADER_ORDER.get(item[0].lower(), len(HEADER_ORDER)))
    entity_id = next((v for k, v in headers if k.lower() == "odata-entityid"), None)
    if entity_id is None and response.status_code == 201 and response.body:
        created = json.loads(bytes(response.body))
        context = str(created.get("@odata.context", ""))
        entity_set = context.split("#", 1)[-1].split("(", 1)[0].split("/", 1)[0]
        record_id = next((v for k, v in created.items() if k.endswith("id") and not k.startswith("@")), None)
        if entity_set and record_id:
            entity_id = f"{ctx.root}/{entity_set}({record_id})"
    if op.content_id and entity_id and response.status_code < 400:
        content_ids[op.content_id] = entity_id
    return PartResult(response.status_code, headers, bytes(response.body or b""), op.content_id)


def _status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"


def _render_part(result: PartResult) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if result.content_id:
        lines.append(f"Content-ID: {result.content_id}")
    lines += ["", _status_line(result.status)]
    lines += [f"{HEADER_SPELLING.get(name.lower(), name)}: {value}" for name, value in result.headers]
    return CRLF.join(lines) + CRLF + CRLF + result.body.decode() + CRLF


def _render_changeset(results: list[PartResult]) -> str:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    inner = "".join(f"--{boundary}{CRLF}{_render_part(r)}" for r in results)
    return f"Content-Type: multipart/mixed; boundary={boundary}{CRLF}{CRLF}{inner}--{boundary}--{CRLF}"
